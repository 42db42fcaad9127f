"""Proxy and mirrors stage against real stand-ins: proxy.py with basic auth (407), an
apt-cacher-ng mirror of the Debian archive, pypiserver, on the sandbox bridge.

One host is converged through the scenarios in order: configured (idempotent, secrets
only in root-only files, never in argv or -vvv output), traffic through the proxy,
wrong password refused with 407, then every key unset (files removed, sources restored).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoglm_infra.stages.network import files as nw
from autoglm_testbed.apt_mirror import AptMirrorStandin
from autoglm_testbed.converge import ConvergeResult, converge_twice, run_pyinfra
from autoglm_testbed.hosts import DEFAULT_CACHE_DIR, Sandbox, SandboxHost, write_inventory
from autoglm_testbed.leaks import ArgvWatch, files_holding_secrets, on_host
from autoglm_testbed.npm_registry import NpmRegistryStandin
from autoglm_testbed.proxy import ProxyStandin
from autoglm_testbed.pypi_mirror import PypiMirror
from autoglm_testbed.waiting import wait_until
from autoglm_testbed.world import controller_address

DEPLOY = "deploys/network.py"
USER = "svc-gpu"
PASSWORD = "pw-" + secrets.token_hex(10)
NPM_CLI = "npm-10.8.2.tgz"  # runs on Debian 12's node 18.19; Debian's own npm is 365 packages
WHEEL_CACHE = DEFAULT_CACHE_DIR.parent / "network-test" / "wheels"
SIX = "six==1.17.0"


@dataclass
class World:
    host: SandboxHost
    proxy: ProxyStandin
    mirror: AptMirrorStandin
    pypi: PypiMirror
    npm: NpmRegistryStandin
    npm_token: str
    ca_file: Path
    password_file: Path
    tmp: Path

    def data(self) -> dict[str, object]:
        return {
            "proxy_url": self.proxy.url,
            "proxy_username": USER,
            "proxy_password_file": str(self.password_file),
            "apt_mirror_url": self.mirror.url,
            "apt_security_mirror_url": self.mirror.security_url,
            "pip_index_url": self.pypi.index_url,
            "pip_trusted_hosts": [self.pypi.index_url.split("/")[2]],
            "npm_registry": self.npm.url,
            "ca_cert_files": [str(self.ca_file)],
        }

    def inventory(self, data: dict[str, object]) -> Path:
        path = self.tmp / "inventory.py"
        write_inventory(path, [self.host], {}, data)
        return path


def six_wheel() -> Path:
    found = sorted(WHEEL_CACHE.glob("six-1.17.0-*.whl"))
    if not found:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--only-binary=:all:", "-d", str(WHEEL_CACHE), SIX],
            check=True,
        )  # fmt: skip
        found = sorted(WHEEL_CACHE.glob("six-1.17.0-*.whl"))
    return found[0]


def make_ca(directory: Path) -> Path:
    key, cert = directory / "ca.key", directory / "corp-root-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=autoglm test proxy CA", "-days", "2",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


@pytest.fixture(scope="module")
def world(
    sandbox: Sandbox,
    sandbox_hosts: Callable[..., list[SandboxHost]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("network")
    sandbox._ensure_network()  # the bridge address the stand-ins bind to
    address = controller_address(sandbox)
    password_file = tmp / "proxy-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    (host,) = sandbox_hosts(1)
    with (
        ProxyStandin(tmp / "proxy", address, USER, PASSWORD) as proxy,
        AptMirrorStandin(tmp / "apt-mirror", address) as mirror,
        PypiMirror(tmp / "pypi", address, [six_wheel()]) as pypi,
        NpmRegistryStandin(tmp / "npm", address) as npm,
    ):
        token = npm.add_user("ci", "pw-" + secrets.token_hex(8))
        yield World(host, proxy, mirror, pypi, npm, token, make_ca(tmp), password_file, tmp)


@pytest.fixture(autouse=True)
def npm_token(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # the env source; the proxy password uses the file source
    monkeypatch.setenv("AUTOGLM_NPM_TOKEN", world.npm_token)


def converge(world: World, data: dict[str, object], *extra: str) -> ConvergeResult:
    result = run_pyinfra(world.inventory(data), DEPLOY, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# ----------------------------------------------------------------------------- scenarios


def test_argv_watch_sees_a_secret_on_a_command_line(world: World) -> None:
    needle = "leak-" + secrets.token_hex(6)
    with ArgvWatch(world.host, [needle]) as watch:
        # The command lives until both scans saw it, however slow a loaded machine is.
        # (its shell waits on cat until the controller closes stdin: nothing is left behind)
        leak = subprocess.Popen(
            world.host.ssh_argv(f"cat >/dev/null; true {needle}"), stdin=subprocess.PIPE
        )
        try:
            wait_until(
                lambda: (on_host(world.host, "cat /run/scan/hits"), watch.controller_hits[:]),
                lambda seen: "/cmdline" in seen[0] and any(needle in h for h in seen[1]),
                "both argv scans to see the command line",
            )
        finally:
            assert leak.stdin is not None
            leak.stdin.close()
            leak.wait(timeout=120)
    assert "/cmdline" in watch.host_hits, "the host-side scan would miss a leak"
    assert any(needle in hit for hit in watch.controller_hits)


def test_configured_converge_keeps_secrets_in_root_only_files(world: World) -> None:
    host = world.host
    original_sources = on_host(host, "sha256sum /etc/apt/sources.list")
    (world.tmp / "sources.sha").write_text(original_sources)
    inventory = world.inventory(world.data())
    token = world.npm_token
    with ArgvWatch(host, [PASSWORD, token]) as watch:
        first, second = converge_twice(inventory, DEPLOY, "-vvv")
    assert first.changed(), "a fresh host must change"
    # the three leak channels: argv, pyinfra output at -vvv (and its JSON), readable files
    assert watch.host_hits.strip() == "", f"secret in a host process's argv: {watch.host_hits}"
    assert watch.controller_hits == [], watch.controller_hits
    for result in (first, second):
        assert PASSWORD not in result.stderr and token not in result.stderr
        assert PASSWORD not in str(result.report) and token not in str(result.report)
    assert ">>>" in first.stderr, "-vvv must show commands, or this check proves nothing"
    holding = {line.split()[-1]: line.split()[:2] for line in files_holding_secrets(host) if line}
    assert holding == {
        nw.APT_PROXY_AUTH: ["600", "root"],
        nw.NETWORK_ENV: ["600", "root"],
        nw.NPM_AUTH: ["600", "root"],
    }
    # what else it wrote, and the distro sources parked, not edited
    listing = on_host(
        host,
        f"stat -c '%a %n' {nw.APT_PROXY} {nw.APT_DISTRO_SOURCE} {nw.PIP_CONF} {nw.NPMRC} "
        f"{nw.PROFILE_SNIPPET} {nw.DOCKER_PROXY_DROPIN} {nw.CA_DIR}/corp-root-ca.crt "
        f"{nw.parked_path('/etc/apt/sources.list')}; test ! -e /etc/apt/sources.list",
    )
    assert all(line.startswith("644 ") for line in listing.splitlines()), listing
    ca_body = world.ca_file.read_text().splitlines()[1]
    assert ca_body in on_host(host, "cat /etc/ssl/certs/ca-certificates.crt")
    profile = on_host(host, f"cat {nw.PROFILE_SNIPPET}")
    assert f"export https_proxy={world.proxy.url}" in profile and USER not in profile


def test_apt_pip_and_npm_go_through_the_proxy_to_the_mirrors(world: World) -> None:
    host = world.host
    before = len(world.proxy.access_lines())
    on_host(host, "apt-get update -q")
    on_host(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "--no-install-recommends python3-pip nodejs")  # fmt: skip
    # pip takes its index from /etc/pip.conf and the proxy login from the env file
    on_host(
        host,
        f"rm -rf /tmp/dl && set -a && . {nw.NETWORK_ENV} && set +a && "
        "python3 -m pip download -q --no-deps -d /tmp/dl six && ls /tmp/dl/six-1.17.0-*.whl",
    )
    # npm: the CLI from the registry (public), then metadata that needs the token
    fetch_cli = (
        "import urllib.request as u; "
        f"u.urlretrieve('{world.npm.url}npm/-/{NPM_CLI}', '/tmp/npm.tgz')"
    )
    version = on_host(
        host,
        f'set -a && . {nw.NETWORK_ENV} && set +a && python3 -c "{fetch_cli}" && '
        "mkdir -p /opt/npm-cli && tar -xzf /tmp/npm.tgz -C /opt/npm-cli && "
        "node /opt/npm-cli/package/bin/npm-cli.js view left-pad version",
    )
    assert version.strip() == "1.3.0"

    def authenticated(lines: list[str]) -> bool:
        return any(f"user: ci({world.proxy.bind})" in x and "GET /left-pad" in x for x in lines)

    # verdaccio writes its log asynchronously. Wait for the authenticated line itself: an
    # anonymous line for the same path can be logged first (seen once in a full session).
    wait_until(world.npm.requests_seen, authenticated, "verdaccio's log of the proxied GET")
    through = world.proxy.access_lines()[before:]
    assert any(x.startswith(f"GET {world.npm.url.split('/')[2]}/") for x in through), through
    mirror_host = world.mirror.base.split("//")[1]
    pypi_host = world.pypi.index_url.split("/")[2]
    # proxy.py logs one line per client connection (apt and pip keep connections open)
    assert any(x.startswith(f"GET {mirror_host}/debian/") for x in through), through
    assert any(x.startswith(f"GET {pypi_host}/") for x in through), through
    assert any("six-1.17.0-py2.py3-none-any.whl - 200" in x for x in through), through
    # the mirror saw every request come from the proxy, none from the host directly
    served = world.mirror.served()
    assert any(p.startswith("secdeb/dists/bookworm-security/") for _, p in served), served[-5:]
    assert any(p.endswith(".deb") and "python3-pip_" in p for _, p in served), served[-5:]
    assert {client for client, _ in served} == {world.proxy.bind}, served[-5:]


def test_wrong_password_gets_407_and_fails(world: World) -> None:
    host = world.host
    world.password_file.write_text("not-the-password\n")
    try:
        converge(world, world.data())
        failures = world.proxy.auth_failures()
        update = subprocess.run(
            host.ssh_argv("apt-get update -q"), capture_output=True, text=True, timeout=120
        )
        assert "407" in update.stdout + update.stderr, update.stdout + update.stderr
        after_apt = world.proxy.auth_failures()
        assert after_apt > failures
        pip = subprocess.run(
            host.ssh_argv(
                f"set -a && . {nw.NETWORK_ENV} && set +a && python3 -m pip download "
                "--no-deps -d /tmp/dl2 --retries 0 --no-cache-dir six"
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        # pip reports a 407 on the index page only as "from versions: none"; the proxy's
        # log shows why
        assert pip.returncode != 0, pip.stdout + pip.stderr
        assert world.proxy.auth_failures() > after_apt
    finally:
        world.password_file.write_text(PASSWORD + "\n")
    converge(world, world.data())
    on_host(host, "apt-get update -q")  # the right password works again


def test_unset_keys_remove_every_file_and_restore_the_sources(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = world.host
    monkeypatch.delenv("AUTOGLM_NPM_TOKEN")  # the env alone configures an npm token
    first, _ = converge_twice(world.inventory({}), DEPLOY)
    assert first.changed()
    managed = [*nw.MANAGED_PATHS, f"{nw.CA_DIR}/corp-root-ca.crt"]
    left = on_host(host, "ls -d " + " ".join(managed) + " 2>/dev/null || true")
    assert left.strip() == "", f"still on the host: {left}"
    assert (
        on_host(host, "sha256sum /etc/apt/sources.list") == (world.tmp / "sources.sha").read_text()
    )
    ca_body = world.ca_file.read_text().splitlines()[1]
    assert ca_body not in on_host(host, "cat /etc/ssl/certs/ca-certificates.crt")
    on_host(host, "apt-get update -q")  # back on the distro's own sources, no proxy
