"""The sandbox harness itself: hosts boot, network, Docker prerequisites, teardown, pyinfra."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_testbed.hosts import HostSpec, Sandbox, SandboxHost

pytestmark = pytest.mark.sandbox

HostFactory = Callable[..., list[SandboxHost]]
InventoryFactory = Callable[..., Path]


@pytest.fixture(scope="module")
def plain_hosts(sandbox_hosts: HostFactory) -> list[SandboxHost]:
    return sandbox_hosts(2)


@pytest.fixture(scope="module")
def docker_host(sandbox_hosts: HostFactory) -> SandboxHost:
    return sandbox_hosts(1, docker=True)[0]


def _python_on(host: SandboxHost, code: str) -> str:
    return host.ssh(f"python3 -c {shlex.quote(code)}").stdout.strip()


def _send_from(host: SandboxHost, address: str, port: int, payload: str) -> None:
    """Connect from inside host to address:port and send payload."""
    _python_on(
        host,
        f"import socket; s = socket.create_connection(({address!r}, {port}), timeout=5); "
        f"s.sendall({payload.encode()!r}); s.close()",
    )


def _banner_seen_from(host: SandboxHost, address: str, port: int) -> str:
    """Connect from inside host to address:port and return the first line the peer sends."""
    return _python_on(
        host,
        f"import socket; s = socket.create_connection(({address!r}, {port}), timeout=5); "
        "print(s.recv(100).decode(errors='replace').splitlines()[0])",
    )


def test_hosts_boot_to_running_systemd(plain_hosts: list[SandboxHost]) -> None:
    for host in plain_hosts:
        assert host.ssh("systemctl is-system-running").stdout.strip() == "running"
        assert host.ssh("systemctl --failed --no-legend").stdout.strip() == ""
        assert host.ssh("cat /proc/1/comm").stdout.strip() == "systemd"


def test_each_host_has_own_address_and_hostname(plain_hosts: list[SandboxHost]) -> None:
    seen = set()
    for host in plain_hosts:
        assert host.ssh("hostname").stdout.strip() == host.name
        addresses = host.ssh("ip -4 -o addr show dev host0").stdout
        assert f" {host.address}/24 " in addresses
        seen.add((host.name, host.address, host.ssh("cat /etc/machine-id").stdout.strip()))
    assert len({s[0] for s in seen}) == len({s[1] for s in seen}) == len({s[2] for s in seen})
    assert len(seen) == len(plain_hosts)


def test_deploy_user_has_key_login_and_passwordless_sudo(plain_hosts: list[SandboxHost]) -> None:
    result = plain_hosts[0].ssh("sudo -n id -u", user="deploy")
    assert result.stdout.strip() == "0"


def test_hosts_reach_controller_on_gateway(
    sandbox: Sandbox, plain_hosts: list[SandboxHost]
) -> None:
    received: list[str] = []
    with socket.create_server((sandbox.gateway, 0)) as server:
        server.settimeout(15)
        port = server.getsockname()[1]

        def serve() -> None:
            for _ in plain_hosts:
                conn, _addr = server.accept()
                with conn:
                    received.append(conn.recv(100).decode())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for host in plain_hosts:
            _send_from(host, sandbox.gateway, port, host.name)
        thread.join(timeout=15)
    assert sorted(received) == sorted(h.name for h in plain_hosts)


def test_hosts_reach_each_other(plain_hosts: list[SandboxHost]) -> None:
    first, second = plain_hosts[:2]
    assert _banner_seen_from(first, second.address, 22).startswith("SSH-2.0-")
    assert _banner_seen_from(second, first.address, 22).startswith("SSH-2.0-")


def _cgroup_mount_options(host: SandboxHost) -> dict[str, str]:
    """cgroup v1 mount point -> per-mount options ("rw,..." or "ro,...") inside the host."""
    out = host.ssh("cat /proc/self/mountinfo").stdout
    options = {}
    for line in out.splitlines():
        fields = line.split()
        if " - cgroup " in line:
            options[fields[4]] = fields[5]
    return options


def test_docker_host_has_writable_cgroup_controllers(
    docker_host: SandboxHost, plain_hosts: list[SandboxHost]
) -> None:
    docker_mounts = _cgroup_mount_options(docker_host)
    assert "/sys/fs/cgroup/memory" in docker_mounts
    assert all(opts.startswith("rw") for opts in docker_mounts.values()), docker_mounts
    docker_host.ssh("mkdir /sys/fs/cgroup/memory/probe && rmdir /sys/fs/cgroup/memory/probe")
    assert docker_host.ssh("systemctl is-active harness-cgroup-rw").stdout.strip() == "active"
    # without /etc/harness/cgroup-rw the controllers stay read-only (nspawn only makes
    # its own name=systemd hierarchy writable)
    plain_mounts = _cgroup_mount_options(plain_hosts[0])
    plain_mounts.pop("/sys/fs/cgroup/systemd", None)
    assert plain_mounts["/sys/fs/cgroup/memory"].startswith("ro")
    assert all(opts.startswith("ro") for opts in plain_mounts.values()), plain_mounts


def test_pyinfra_exec_over_ssh_with_generated_inventory(
    plain_hosts: list[SandboxHost], sandbox_inventory: InventoryFactory
) -> None:
    inventory = sandbox_inventory(plain_hosts)
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    result = subprocess.run(
        [pyinfra, str(inventory), "exec", "-y", "--", "hostname"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for host in plain_hosts:
        assert f"[{host.name}] {host.name}" in output, output


def test_down_removes_everything_and_spares_other_sandbox(
    sandbox: Sandbox, plain_hosts: list[SandboxHost], tmp_path: Path
) -> None:
    other = Sandbox("ptdown", _unused_net(), tmp_path / "state", cache_dir=sandbox.cache_dir)
    try:
        first = other.up([HostSpec()])[0]
        first.ssh("true")  # records its host key in known_hosts
        other.remove([first])
        # same index and address again, new host keys: `up` must have reset known_hosts
        hosts = other.up([HostSpec(), HostSpec(docker=True)])
        assert hosts[0].address == first.address
        hosts[0].ssh("true")
        before = other.leftovers()
        for kind in ("processes", "mounts", "netns", "links", "cgroups", "iptables", "files"):
            assert before[kind], f"expected some {kind} while ptdown is up: {before}"
    finally:
        other.down()
    after = other.leftovers()
    assert after == {kind: [] for kind in after}
    for pid in before["processes"]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(int(pid))
    # the session sandbox is untouched
    assert sandbox.leftovers()["iptables"]
    for host in plain_hosts:
        assert host.ssh("systemctl is-system-running").stdout.strip() == "running"


def _unused_net() -> int:
    """A 10.231.<net>.0/24 no interface here uses: a `make vagrant` VM (net 3) or another
    session's sandbox may be up beside this one."""
    addresses = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    used = {int(n) for n in re.findall(r"\b10\.231\.(\d+)\.", addresses)}
    return next(n for n in range(250, 200, -1) if n not in used)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
