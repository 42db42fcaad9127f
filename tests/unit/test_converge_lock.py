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


def test_holder_runs_then_once_locked_without_the_lock_or_the_channel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`then` (the run's state reads) prints after LOCKED; what it starts holds neither the
    lock's descriptor nor the channel's stdin, and the holder still records what the
    controller reports once `then` is done."""
    then = (
        "echo then-started; [ -e /proc/self/fd/9 ] && echo fd9-inherited; "
        'cat; sleep 30 >/dev/null & echo "bg $!"; echo then-done'
    )
    script = holder_script(HolderInfo(controller="c1"), 0, then)
    script = script.replace("/run/lock/", f"{tmp_path}/")
    holder = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().startswith("LOCKED ")
    lines = [holder.stdout.readline().strip() for _ in range(3)]
    assert lines[0] == "then-started" and lines[1].startswith("bg ") and lines[2] == "then-done"
    background = int(lines[1].split()[1])
    holder.stdin.write("controller=c1\tstage=Model: pull\n")
    holder.stdin.flush()
    record = tmp_path / "autoglm-converge.holder"
    deadline = time.monotonic() + 10
    while "Model: pull" not in record.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert parse_holder(record.read_text()).stage == "Model: pull"
    holder.communicate("", timeout=20)  # the holder lets go; its background child lives on
    try:
        again = subprocess.run(["sh", "-c", script.replace(then, "true")], input="",
                               capture_output=True, text=True, timeout=20)  # fmt: skip
        assert again.stdout.startswith("LOCKED "), again.stdout  # the child kept no lock
    finally:
        subprocess.run(["kill", str(background)], check=False)
