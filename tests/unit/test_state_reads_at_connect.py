"""The batch sent with the converge lock request at connect time (pyinfra_ext/state_reads).

Which hosts start it (a record for these deploy files, a plain integer lock wait, no
preview, not turned off), and how its output is taken from the lock holder's stdout,
run for real: the holder script with the batch, in sh with flock, on this machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyinfra.context import ctx_host, ctx_state

from autoglm_infra.common.batched_reads import (
    StateRecord,
    check_marker,
    early_script,
    encode_record,
)
from autoglm_infra.common.converge_lock import HolderInfo, holder_script
from autoglm_infra.pyinfra_ext import converge_lock, state_reads

COMMANDS = ["echo one; echo two", "uname -s", "exit 3"]
SMOKE = "sleep 0.2; echo '{\"ok\": true}'"  # stands for the smoke test: slower than the reads


class Host(SimpleNamespace):
    pass


@pytest.fixture()
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[int, str]]:
    """Where records live, and what start_converge_lock was asked (no SSH here)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AUTOGLM_STATE_PREFETCH", raising=False)
    monkeypatch.setattr(sys, "argv", ["pyinfra", "inventory.py", "deploys/full.py"])
    calls: list[tuple[int, str]] = []

    def start(run_state: Any, target: Any, wait_s: int, then: str) -> None:
        calls.append((wait_s, then))

    monkeypatch.setattr(state_reads, "start_converge_lock", start)
    yield calls
    state_reads._early_batches.clear()
    state_reads._early_checks.clear()
    state_reads._connected.clear()


RUNS: list[SimpleNamespace] = []  # kept alive: a run is known by its id


def new_run() -> SimpleNamespace:
    RUNS.append(SimpleNamespace())
    return RUNS[-1]


def host(**data: Any) -> Host:
    return Host(name="gpu-01", data={"ssh_hostname": "10.0.0.1", **data})


def write_record(target: Host, checks: tuple[str, ...] = ()) -> None:
    path = state_reads.record_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(encode_record(StateRecord(tuple(COMMANDS), checks)))


def test_a_host_with_a_record_sends_its_batch_with_the_lock_request(
    started: list[tuple[int, str]],
) -> None:
    target = host(converge_lock_wait=30)
    state_reads.start_state_reads_at_connect(new_run(), target)
    assert started == []  # no record yet: the converge reads one by one and writes it
    write_record(target)
    run = new_run()
    state_reads.start_state_reads_at_connect(run, target)
    ((wait_s, then),) = started
    assert wait_s == 30 and "uname -s" in then and then.rstrip().endswith(" done'")
    state_reads.start_state_reads_at_connect(run, target)  # reconnected after a reboot
    assert len(started) == 1


@pytest.mark.parametrize("wait", ["600", True, -1, 86401, None])
def test_a_lock_wait_that_is_not_a_plain_valid_integer_is_left_to_the_settings_check(
    started: list[tuple[int, str]], wait: object
) -> None:
    target = host(converge_lock_wait=wait)
    write_record(target)
    state_reads.start_state_reads_at_connect(new_run(), target)
    assert started == []


def test_previews_and_prefetch_off_start_nothing(
    started: list[tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = host()
    write_record(target)
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--dry"])
    state_reads.start_state_reads_at_connect(new_run(), target)
    monkeypatch.setattr(sys, "argv", sys.argv[:-1])
    monkeypatch.setenv("AUTOGLM_STATE_PREFETCH", "0")
    state_reads.start_state_reads_at_connect(new_run(), target)
    assert started == []
    monkeypatch.delenv("AUTOGLM_STATE_PREFETCH")
    state_reads.start_state_reads_at_connect(new_run(), target)
    assert len(started) == 1  # the default wait, 600 s


class Channel:
    def settimeout(self, value: float | None) -> None:
        pass


def holder_stdout(tmp_path: Path, then: str) -> Any:
    """The real holder with `then`, its stdout positioned after LOCKED (as after
    take_converge_lock), readable as paramiko's ChannelFile is (str lines)."""
    script = holder_script(HolderInfo(), 5, then).replace("/run/lock/", f"{tmp_path}/")
    proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().startswith("LOCKED ")
    stdout = SimpleNamespace(readline=proc.stdout.readline, channel=Channel())
    return proc, stdout


def take_batch(
    monkeypatch: pytest.MonkeyPatch, stdout: Any, marker: str
) -> dict[str, list[str]] | None:
    key = (1, "gpu-01")
    monkeypatch.setitem(converge_lock._held, key, converge_lock._Holder(None, (None, stdout, None),
                                                                      1, HolderInfo()))  # fmt: skip
    monkeypatch.setitem(state_reads._early_batches, key, (marker, COMMANDS))
    monkeypatch.setattr(state_reads, "host", SimpleNamespace(name="gpu-01"))
    return state_reads._batch_from_holder(key)


def test_the_batch_is_read_from_the_holder_up_to_its_end_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "autoglm-batch-0123456789abcdef"
    then = f"{state_reads.batch_script(COMMANDS, marker)}\necho '{marker} done'"
    proc, stdout = holder_stdout(tmp_path, then)
    try:
        batch = take_batch(monkeypatch, stdout, marker)
    finally:
        proc.communicate("", timeout=20)
    # `exit 3` is left out: that read goes to the host on its own
    assert batch == {"echo one; echo two": ["one", "two"], "uname -s": ["Linux"]}


def test_a_batch_cut_off_before_its_end_line_gives_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "autoglm-batch-0123456789abcdef"
    then = state_reads.batch_script(COMMANDS, marker)  # then the holder dies: no end line
    proc, stdout = holder_stdout(tmp_path, f"{then}; kill -9 $$")
    try:
        assert take_batch(monkeypatch, stdout, marker) == {}  # every read goes on its own
    finally:
        proc.communicate("", timeout=20)


def test_a_recorded_closing_check_starts_with_the_reads(started: list[tuple[int, str]]) -> None:
    target = host()
    write_record(target, checks=(SMOKE,))
    run = new_run()
    state_reads.start_state_reads_at_connect(run, target)
    ((_, then),) = started
    assert "uname -s" in then and "sleep 0.2" in then and then.endswith("-check done'")
    marker, checks = state_reads._early_checks[(id(run), "gpu-01")]
    assert checks == [SMOKE] and then.endswith(f"echo '{marker} done'")


class HashableHost:  # a key of State.ops, as pyinfra's Host is
    name = "gpu-01"


class Meta(SimpleNamespace):
    def is_complete(self) -> bool:
        return bool(self.complete)


def early_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str, *, changed: bool
) -> list[str] | None:
    """early_check against the real holder running the reads and SMOKE, after an operation
    that sent the host a command (or not)."""
    marker = "autoglm-batch-0123456789abcdef"
    proc, stdout = holder_stdout(tmp_path, early_script(COMMANDS, [SMOKE], marker))
    target, run = HashableHost(), SimpleNamespace()
    run.ops = {
        target: {"op": SimpleNamespace(operation_meta=Meta(complete=True, executed=changed))}
    }
    key = (id(run), "gpu-01")
    monkeypatch.setitem(converge_lock._held, key, converge_lock._Holder(None, (None, stdout, None),
                                                                      1, HolderInfo()))  # fmt: skip
    monkeypatch.setitem(state_reads._early_batches, key, (marker, COMMANDS))
    monkeypatch.setitem(state_reads._early_checks, key, (check_marker(marker), [SMOKE]))
    monkeypatch.setattr(state_reads, "host", target)
    monkeypatch.setattr(state_reads, "host_key", lambda: key)
    try:
        with ctx_state.use(run), ctx_host.use(target):
            assert state_reads._batch_from_holder(key) == {
                "echo one; echo two": ["one", "two"], "uname -s": ["Linux"]
            }  # fmt: skip
            answer = state_reads.early_check(command)
            assert state_reads.early_check(command) is None  # taken once; then run again
            return answer
    finally:
        proc.communicate("", timeout=20)


def test_a_run_that_changed_nothing_takes_the_check_run_at_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert early_check(monkeypatch, tmp_path, SMOKE, changed=False) == ['{"ok": true}']


def test_after_a_change_or_for_another_check_the_check_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert early_check(monkeypatch, tmp_path, SMOKE, changed=True) is None
    assert early_check(monkeypatch, tmp_path, "python3 - --chat", changed=False) is None
