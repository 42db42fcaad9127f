"""The converge lock's shell, run for real with sh and flock on this machine."""

from __future__ import annotations

import subprocess
import time

from autoglm_infra.common.converge_lock import (
    HolderInfo,
    busy_message,
    holder_script,
    parse_holder,
    tied_command,
)


def test_holder_record_round_trips_and_flattens_tabs() -> None:
    info = HolderInfo("laptop-3", "alice", "2026-12-04T19:02:11Z", "deploys/full.py", "a\tb")
    parsed = parse_holder(info.line() + "\tpid=42\n")
    assert parsed == HolderInfo(
        "laptop-3", "alice", "2026-12-04T19:02:11Z", "deploys/full.py", "a b", "42"
    )
    assert parse_holder("") == HolderInfo()


def test_busy_message_names_holder_key_and_fix() -> None:
    text = busy_message("h1", HolderInfo("laptop-3", "alice", "t0", "deploys/full.py", "x"), 5)
    for part in ("h1 is being converged by controller laptop-3 (user alice)", "t0",
                 "converge_lock_wait", "kill ?"):  # fmt: skip
        assert part in text


def test_tied_command_is_unchanged_without_a_holder() -> None:
    assert tied_command("echo hi", None) == "echo hi"


def test_tied_command_dies_with_the_holder() -> None:
    holder = subprocess.Popen(["sleep", "30"])
    step = subprocess.Popen(
        ["sh", "-c", tied_command("sleep 30; echo survived", holder.pid, grace_s=1)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let the step start; the point is what happens after the holder dies
    holder.kill()
    holder.wait()
    out, _ = step.communicate(timeout=20)
    assert step.returncode != 0 and "survived" not in out


def test_holder_script_refuses_with_timeout_naming_the_holder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = holder_script(HolderInfo(controller="c1"), 0)
    script = script.replace("/run/lock/", f"{tmp_path}/")
    first = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    assert first.stdout is not None and first.stdout.readline().startswith("LOCKED ")
    second = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=20)
    assert second.returncode == 4
    assert parse_holder(second.stdout.splitlines()[-1].removeprefix("TIMEOUT")).controller == "c1"
    first.communicate("", timeout=20)  # stdin ends: the holder lets go
    third = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    assert third.stdout is not None and third.stdout.readline().startswith("LOCKED ")
    third.communicate("", timeout=20)
