"""A fleet: one broken host never stops the rest, and a rolling upgrade in gated batches.

Three venv hosts of the complete world and one address nothing answers on. The first
test breaks three of the four hosts in different ways and converges the healthy one; the
rollout tests then converge all three and roll a serving change (a new engine argument,
which rewrites the unit and restarts the service) through a canary and a batch of two,
polling every host's health from the controller the whole time.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_infra.pyinfra_ext.state_reads import CHECK_WITH_THE_LOCK, READS_WITH_THE_LOCK
from autoglm_infra.stages.network.files import PIP_CONF
from autoglm_testbed.converge import describe_failure, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.waiting import unit_properties
from autoglm_testbed.world import (
    ROOT,
    Standins,
    controller_address,
    full_group_data,
    host_data_for,
)

UNIT = "autoglm-serve.service"
SEED = ["--default-seed", "7"]  # the rolled-out change: the engine's argv, so a restart


@dataclasses.dataclass
class Fleet:
    hosts: list[SandboxHost]
    standins: Standins
    sandbox: Sandbox
    work: Path

    def inventory(
        self,
        name: str,
        overrides: dict[str, dict[str, object]] | None = None,
        unreachable: bool = False,
        **group: object,
    ) -> Path:
        hosts = list(self.hosts)
        if unreachable:  # an address on the sandbox bridge that no host has
            hosts.append(
                dataclasses.replace(
                    hosts[0],
                    name=f"{self.sandbox.name}-gone",
                    address=f"10.231.{self.sandbox.net}.250",
                )
            )
        data = host_data_for(self.hosts, self.standins)
        for host, extra in (overrides or {}).items():
            data[host] = {**data.get(host, {}), **extra}
        if unreachable:
            data[hosts[-1].name] = {"serve_mode": "venv", "ssh_connect_timeout": 5}
        path = self.work / f"{name}.py"
        write_inventory(path, hosts, data, {**full_group_data(self.standins), **group})
        return path


@pytest.fixture(scope="module")
def fleet(
    sandbox: Sandbox,
    sandbox_hosts: Callable[..., list[SandboxHost]],
    standins: Standins,
    tmp_path_factory: pytest.TempPathFactory,
) -> Fleet:
    return Fleet(sandbox_hosts(3), standins, sandbox, tmp_path_factory.mktemp("fleet"))


def summary_lines(stderr: str, title: str = "Per-host summary") -> dict[str, str]:
    """host -> its line of the summary pyinfra (or the rollout) printed last."""
    block = stderr.rsplit(f"--> {title}:", 1)[1].splitlines()[1:]
    lines: dict[str, str] = {}
    for line in block:
        host, sep, what = line.strip().partition(": ")
        if not sep or not line.startswith("    ") or " " in host:
            break
        lines[host.rstrip(":")] = what.strip()
    return lines


def test_one_broken_host_never_stops_the_rest(fleet: Fleet) -> None:
    healthy, small_disk, bad_mirror = fleet.hosts
    inventory = fleet.inventory(
        "broken",
        {
            small_disk.name: {"preflight_min_disk_gib": 100000},
            # nothing listens on port 1 of the controller: every apt download fails
            bad_mirror.name: {
                "apt_mirror_url": f"http://{controller_address(fleet.sandbox)}:1/debian"
            },
        },
        unreachable=True,
    )
    result = run_pyinfra(inventory, "deploys/full.py")
    assert result.returncode != 0, describe_failure(result)
    assert "Traceback" not in result.stderr
    lines = summary_lines(result.stderr)
    print("\n".join(f"{h}: {line}" for h, line in lines.items()))
    assert set(lines) == {h.name for h in fleet.hosts} | {f"{fleet.sandbox.name}-gone"}, lines
    assert lines[healthy.name].startswith("converged with "), lines
    assert int(lines[healthy.name].split()[2]) > 10, lines
    assert lines[small_disk.name].startswith("failed at stage preflight: "), lines
    assert "preflight_min_disk_gib is 100000" in lines[small_disk.name]
    assert lines[bad_mirror.name].startswith("failed at stage "), lines
    assert lines[f"{fleet.sandbox.name}-gone"].startswith("unreachable"), lines
    # the healthy host is fully converged: its service answers
    assert unit_properties(healthy, UNIT, "ActiveState")["ActiveState"] == "active"
    # the refused host was not touched, the unreachable one could not be
    assert (
        small_disk.ssh(f"test -e /etc/systemd/system/{UNIT} || echo none").stdout.strip() == "none"
    )


class HealthPoller:
    """Every host's /health, polled from the controller over one SSH session per host.

    The endpoint listens on the host's loopback, so the poll runs there; samples carry the
    host's clock (the sandbox hosts share the controller's kernel clock)."""

    SCRIPT = (
        "import time, urllib.request as u\n"
        "while True:\n"
        "    try:\n"
        "        code = u.urlopen('http://127.0.0.1:8000/health', timeout=2).status\n"
        "    except Exception as exc:\n"
        "        code = getattr(exc, 'code', 0)\n"
        "    print(f'{time.time():.3f} {code}', flush=True)\n"
        "    time.sleep(0.2)\n"
    )

    def __init__(self, hosts: list[SandboxHost]) -> None:
        self.samples: list[tuple[float, str, bool]] = []
        self._procs = [
            subprocess.Popen(
                h.ssh_argv(f"python3 -c {shlex.quote(self.SCRIPT)}"),
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            for h in hosts
        ]
        self._threads = [
            threading.Thread(target=self._read, args=(h.name, p), daemon=True)
            for h, p in zip(hosts, self._procs, strict=True)
        ]
        for t in self._threads:
            t.start()

    def _read(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            when, code = line.split()
            self.samples.append((float(when), name, code == "200"))

    def stop(self) -> None:
        for p in self._procs:
            p.terminate()
            p.wait(timeout=30)
        for t in self._threads:
            t.join(timeout=30)

    def down_sets(self) -> list[frozenset[str]]:
        """The hosts out of service after each sample, in time order."""
        up: dict[str, bool] = {}
        seen = []
        for _, name, ok in sorted(self.samples):
            up[name] = ok
            seen.append(frozenset(h for h, ok_ in up.items() if not ok_))
        return seen


def rollout(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoglm_infra.rollout", str(inventory), "deploys/full.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )


def engine_argv(host: SandboxHost) -> str:
    return host.ssh(f"systemctl cat {UNIT}").stdout


@pytest.fixture(scope="module")
def converged_fleet(fleet: Fleet) -> Fleet:
    result = run_pyinfra(fleet.inventory("plain"), "deploys/full.py")
    assert result.returncode == 0, describe_failure(result)
    lines = summary_lines(result.stderr)
    assert all(line.startswith("converged with") for line in lines.values()), lines
    return fleet


# Every host's state reads, timed on the hosts: dpkg-query (which the host profile, the GPU
# probe and several stages' snapshots run) wrapped to take 0.5 s and log when it ran.
SLOW_DPKG_QUERY = """#!/bin/sh
start=$(date +%s.%N); sleep 0.5
/usr/bin/dpkg-query "$@"; rc=$?
echo "$start $(date +%s.%N)" >> /run/autoglm-test-dpkg-query.log
exit $rc
"""


def test_the_hosts_state_reads_overlap_in_time(converged_fleet: Fleet) -> None:
    """pyinfra prepares every host's operations at once (a greenlet per host), so each
    host's reads run while the others' do: their first reads overlap, and the run takes
    about one host's reads, not three."""
    fleet = converged_fleet
    wrapper = "/usr/local/bin/dpkg-query"
    for host in fleet.hosts:
        host.ssh(f"cat > {wrapper} <<'EOF'\n{SLOW_DPKG_QUERY}EOF\nchmod 755 {wrapper}; "
                 "rm -f /run/autoglm-test-dpkg-query.log")  # fmt: skip
    try:
        result = run_pyinfra(
            fleet.inventory("plain"), "deploys/full.py", "--data", "verify_chat=False"
        )
        assert result.returncode == 0 and result.changed() == [], describe_failure(result)
        calls = {
            host.name: [
                tuple(map(float, line.split()))
                for line in host.ssh("cat /run/autoglm-test-dpkg-query.log").stdout.splitlines()
            ]
            for host in fleet.hosts
        }
    finally:
        for host in fleet.hosts:
            host.ssh(f"rm -f {wrapper} /run/autoglm-test-dpkg-query.log", check=False)
    reads = min(len(c) for c in calls.values())
    assert reads >= 2, calls  # the wrapper was on the path of the run's reads
    first = [c[0] for c in calls.values()]
    assert max(start for start, _ in first) < min(end for _, end in first), calls
    spans = [c[-1][1] - c[0][0] for c in calls.values()]
    whole = max(c[-1][1] for c in calls.values()) - min(c[0][0] for c in calls.values())
    # one after another, the whole would be the sum of the hosts' spans
    assert whole < 0.6 * sum(spans), (whole, spans)


def sent_commands(stderr: str, host: SandboxHost) -> list[str]:
    """Commands the run sent `host` besides its converge lock request (--debug log)."""
    return [
        line.split(f"Running command on {host.name}: ", 1)[1]
        for line in stderr.splitlines()
        if f"Running command on {host.name}: " in line
    ]


def test_a_no_op_re_run_sends_no_command_besides_the_lock_request(converged_fleet: Fleet) -> None:
    """The stages' state reads and the smoke test that the last converge made go to each
    host with the converge lock request, sent when the host connects: a no-op re-run sends
    no other command. A smoke test the record lacks (the settings changed it) runs on its
    own; so does the smoke test of a host that a stage changed, after the change."""
    inventory = converged_fleet.inventory("plain")
    quick = run_pyinfra(inventory, "deploys/full.py", "--data", "verify_chat=False")
    assert quick.returncode == 0 and quick.changed() == [], describe_failure(quick)
    chat = run_pyinfra(inventory, "deploys/full.py", debug=True)  # another smoke test
    assert chat.returncode == 0 and chat.changed() == [], describe_failure(chat)
    for host in converged_fleet.hosts:
        assert [c for c in sent_commands(chat.stderr, host) if "python3 -" in c], chat.stderr[
            -3000:
        ]
    changed, *kept = converged_fleet.hosts
    changed.ssh(f"rm {PIP_CONF}")
    result = run_pyinfra(inventory, "deploys/full.py", debug=True)
    assert result.returncode == 0, describe_failure(result)
    assert result.changed() and all(changed.name in c and "," not in c for c in result.changed())
    for host in converged_fleet.hosts:
        with_lock = re.search(rf"{host.name}: (\d+) {READS_WITH_THE_LOCK}", result.stderr)
        assert with_lock and int(with_lock[1]) >= 8, result.stderr[-3000:]
    for host in kept:
        assert sent_commands(result.stderr, host) == [], result.stderr[-3000:]
        assert f"{host.name}: {CHECK_WITH_THE_LOCK}" in result.stderr
    smoke = [c for c in sent_commands(result.stderr, changed) if "python3 -" in c]
    assert len(smoke) == 1, "\n".join(c[:200] for c in sent_commands(result.stderr, changed))
    assert f"{changed.name}: {CHECK_WITH_THE_LOCK}" not in result.stderr
    assert result.stderr.count("taken from the batched state read") >= 8 * len(
        converged_fleet.hosts
    ), result.stderr[-3000:]


def test_a_failed_canary_stops_the_rollout_before_any_other_host(converged_fleet: Fleet) -> None:
    fleet = converged_fleet
    canary, *rest = fleet.hosts
    inventory = fleet.inventory(
        "canary-fails", {canary.name: {"preflight_min_disk_gib": 100000}}, serve_extra_args=SEED
    )
    before = {h.name: engine_argv(h) for h in rest}
    result = rollout(inventory, "--batch-size", "2", "--max-failures", "0")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = summary_lines(result.stderr, "Rollout summary")
    assert lines[canary.name].startswith("failed at stage preflight"), lines
    assert all(lines[h.name] == "not reached: left as it was" for h in rest), lines
    assert "rollout stopped: 1 host(s) failed, more than --max-failures 0" in result.stderr
    assert "on the new state: none" in result.stderr
    assert {h.name: engine_argv(h) for h in rest} == before  # untouched


def test_a_rolling_upgrade_keeps_all_but_one_batch_in_service(converged_fleet: Fleet) -> None:
    fleet = converged_fleet
    batches = [{fleet.hosts[0].name}, {h.name for h in fleet.hosts[1:]}]
    started = {
        h.name: unit_properties(h, UNIT, "ActiveEnterTimestampMonotonic") for h in fleet.hosts
    }
    poller = HealthPoller(fleet.hosts)
    try:
        result = rollout(fleet.inventory("seeded", serve_extra_args=SEED), "--batch-size", "2")
    finally:
        poller.stop()
    assert result.returncode == 0, result.stderr[-4000:]
    lines = summary_lines(result.stderr, "Rollout summary")
    assert all(lines[h.name].startswith("converged with") for h in fleet.hosts), lines
    assert f"on the new state: {', '.join(h.name for h in fleet.hosts)}" in result.stderr
    for h in fleet.hosts:  # every host took the change and restarted its service
        assert "--default-seed 7" in engine_argv(h) or "'--default-seed' '7'" in engine_argv(h)
        assert unit_properties(h, UNIT, "ActiveEnterTimestampMonotonic") != started[h.name]
    down = poller.down_sets()
    print(f"{len(poller.samples)} health samples; out of service together: {set(down)}")
    assert len(poller.samples) > 20, "the health poll barely ran"
    beyond = [d for d in down if d and not any(d <= b for b in batches)]
    assert beyond == [], f"out of service together, across batches: {sorted(set(beyond))[:5]}"
    assert any(down), "no host was ever seen out of service: the poll missed the restarts"

    # the same setting given after --, as pyinfra's --data: nothing left to change
    seed = f"serve_extra_args={json.dumps(SEED)}"
    again = rollout(fleet.inventory("plain"), "--batch-size", "2", "--", "--data", seed)
    assert again.returncode == 0, again.stderr[-4000:]
    lines = summary_lines(again.stderr, "Rollout summary")
    assert all(lines[h.name] == "converged with 0 changes" for h in fleet.hosts), lines
