"""The complete deploy on an air-gapped host: no way out of the sandbox, mirrors only.

One host whose forwarded traffic leaving the sandbox subnet is rejected (and which may
reach the controller only on the bridge address) is shown to be cut off, then converged
with deploys/full.py twice from the stand-ins alone: the Debian archive through
apt-cacher-ng (`apt_mirror_url`), wheels from the pypiserver index, the model from the
hub stand-in, NVIDIA packages from the signed repo stand-in. The mirrors' logs show they
served the host. Runs once per module (one host boot, session stand-ins).
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from autoglm_testbed.apt_mirror import AptMirrorStandin
from autoglm_testbed.converge import ConvergeResult, converge_twice
from autoglm_testbed.hosts import (
    HostSpec,
    Sandbox,
    SandboxHost,
    read_mirrors,
    write_inventory,
)
from autoglm_testbed.world import (
    TINY_MODEL_DIR,
    Standins,
    controller_address,
    full_group_data,
    host_data_for,
)

# Connects to each (address, port) and prints one JSON line per target: what happened and
# how long it took. Run on the host, so nothing but python3 is needed there.
PROBE = """
import json, socket, sys, time
for addr, port in json.loads(sys.argv[1]):
    t = time.monotonic()
    try:
        socket.create_connection((addr, port), timeout=8).close()
        outcome = "connected"
    except OSError as exc:
        outcome = type(exc).__name__
    print(json.dumps([addr, port, outcome, round(time.monotonic() - t, 2)]))
"""


@dataclass
class Probe:
    address: str
    port: int
    outcome: str  # "connected", "ConnectionRefusedError", "OSError" (unreachable), "TimeoutError"
    seconds: float


@dataclass
class AirGapped:
    host: SandboxHost
    mirror: AptMirrorStandin
    standins: Standins
    outside: list[tuple[str, int]]  # addresses the controller itself reaches
    before: list[Probe]  # from the host, before the converge
    apt_update_before: subprocess.CompletedProcess[str]
    apt_update_seconds: float
    first: ConvergeResult
    second: ConvergeResult


def probe_from(host: SandboxHost, targets: list[tuple[str, int]]) -> list[Probe]:
    result = host.ssh(f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(targets))}")
    return [Probe(*json.loads(line)) for line in result.stdout.splitlines()]


def outside_targets(sandbox: Sandbox) -> list[tuple[str, int]]:
    """The Debian archive (by address, as DNS is outside too), the controller's resolver
    and the controller's own addresses other than the bridge (INPUT chain)."""
    mirror_host = urlsplit(read_mirrors()[0]).hostname or "deb.debian.org"
    targets = [(str(socket.getaddrinfo(mirror_host, 80, socket.AF_INET)[0][4][0]), 80)]
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and "." in words[1] and not words[1].startswith("127."):
            targets.append((words[1], 53))
    addresses = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    for line in addresses.splitlines():
        iface, address = line.split()[1], line.split()[3].split("/")[0]
        if iface != sandbox.bridge and not address.startswith("127."):
            targets.append((address, 22))
    return targets


def controller_connects(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def air_gapped(
    sandbox: Sandbox, standins: Standins, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirGapped]:
    tmp = tmp_path_factory.mktemp("air-gapped")
    (host,) = sandbox.up([HostSpec(air_gapped=True)])
    try:
        with AptMirrorStandin(tmp / "apt-mirror", controller_address(sandbox)) as mirror:
            standins.apt_mirror = mirror
            outside = outside_targets(sandbox)
            before = probe_from(host, outside)
            started = time.monotonic()
            # the base image's sources: the Debian archive the controller uses
            apt_update = host.ssh(
                "apt-get update -o Acquire::Retries=0 -o Acquire::http::Timeout=10",
                check=False,
                timeout=120,
            )
            apt_seconds = time.monotonic() - started
            inventory = tmp / "inventory.py"
            write_inventory(
                inventory, [host], host_data_for([host], standins), full_group_data(standins)
            )
            first, second = converge_twice(inventory, "deploys/full.py", "-v")
            yield AirGapped(
                host, mirror, standins, outside, before, apt_update, apt_seconds, first, second
            )
    finally:
        standins.apt_mirror = None
        sandbox.remove([host])


def test_host_cannot_reach_outside_before_the_converge(air_gapped: AirGapped) -> None:
    # the same Debian archive answers the controller, so only the air gap stops the host
    archive = air_gapped.outside[0]
    assert controller_connects(*archive), f"controller cannot reach {archive} itself"
    for probe in air_gapped.before:
        assert probe.outcome in ("ConnectionRefusedError", "OSError"), probe
        assert probe.seconds < 2, f"{probe}: rejected, not silently dropped, so it fails fast"


def test_apt_update_from_the_debian_archive_fails_before_the_converge(
    air_gapped: AirGapped,
) -> None:
    result = air_gapped.apt_update_before
    output = result.stdout + result.stderr
    # apt-get update exits 0 when every source fails: read what it says instead
    assert "W: Failed to fetch" in output and "Some index files failed" in output, output
    assert not any(line.startswith(("Hit:", "Get:")) for line in output.splitlines()), output
    assert air_gapped.apt_update_seconds < 30, "an air-gapped apt fails fast"


def test_complete_deploy_converges_from_mirrors_and_verifies(air_gapped: AirGapped) -> None:
    first, second = air_gapped.first, air_gapped.second
    assert first.changed(), "the first converge made the host"
    assert second.changed() == []
    for result in (first, second):
        assert "chat completion in" in result.stderr  # the verify stage's smoke test


def test_apt_mirror_served_the_host(air_gapped: AirGapped) -> None:
    host = air_gapped.host.address
    served = [path for client, path in air_gapped.mirror.served() if client == host]
    assert any(p.endswith("InRelease") for p in served), served
    assert any("/python3-venv_" in p and p.endswith(".deb") for p in served), served
    sources = air_gapped.host.ssh("cat /etc/apt/sources.list.d/*.sources").stdout
    assert air_gapped.mirror.url in sources and "deb.debian.org" not in sources


def test_hub_served_the_model_to_the_host(air_gapped: AirGapped) -> None:
    standins, host = air_gapped.standins, air_gapped.host
    hub_log = (standins.hub.workdir / "access.log").read_text()
    served = [json.loads(line) for line in hub_log.splitlines() if line.strip()]
    assert any(e["client"] == host.address and e["status"] in (200, 206) for e in served)
    listing = host.ssh(f"ls {TINY_MODEL_DIR}").stdout.split()
    assert "config.json" in listing and any(n.endswith(".safetensors") for n in listing)


def test_venv_came_from_the_index(air_gapped: AirGapped) -> None:
    # pypiserver keeps no access log; pip on a host with no way out had only the index
    host, index = air_gapped.host, air_gapped.standins.pypi.index_url
    assert f"index-url = {index}" in host.ssh("cat /etc/pip.conf").stdout
    version = host.ssh("/opt/autoglm/venv/bin/python -c 'import torch; print(torch.__version__)'")
    assert "+cpu" in version.stdout


def test_host_is_still_cut_off_after_the_converge(air_gapped: AirGapped) -> None:
    after = probe_from(air_gapped.host, air_gapped.outside)
    assert [p.outcome for p in after] == [p.outcome for p in air_gapped.before]
    assert all(p.outcome != "connected" for p in after)


def test_removing_the_host_removes_its_rules(sandbox: Sandbox, air_gapped: AirGapped) -> None:
    assert sandbox._tagged_iptables_rules(air_gapped.host.name), "the air gap is tagged rules"
    sandbox.remove([air_gapped.host])
    assert sandbox._tagged_iptables_rules(air_gapped.host.name) == []
    assert sandbox._tagged_iptables_rules(), "the sandbox's own rules stay"
