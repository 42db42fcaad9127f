"""One shell running several reads side by side, and their outputs told apart again."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autoglm_infra.common.batched_reads import (
    StateRecord,
    batch_script,
    check_marker,
    decode_record,
    early_script,
    encode_record,
    split_batch,
)

MARKER = "autoglm-batch-0123456789abcdef"


def run_batch(commands: list[str], tmp_path: Path) -> dict[str, list[str]]:
    """The batch run by a real sh, its stdout split into lines as pyinfra does."""
    done = subprocess.run(
        ["sh", "-c", batch_script(commands, MARKER)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )
    return split_batch(done.stdout.splitlines(), MARKER, commands)


def test_each_command_gets_exactly_the_lines_it_printed(tmp_path: Path) -> None:
    commands = [
        "echo a; echo b",
        "printf 'no final newline'",
        "echo; echo",
        "",
        'echo "it\'s $((1 + 1))"',
        "export X=1; echo $X",
    ]
    assert run_batch(commands, tmp_path) == {
        "echo a; echo b": ["a", "b"],
        "printf 'no final newline'": ["no final newline"],
        "echo; echo": ["", ""],
        "": [],
        'echo "it\'s $((1 + 1))"': ["it's 2"],
        "export X=1; echo $X": ["1"],
    }


def test_a_failed_command_is_left_out_and_the_others_kept(tmp_path: Path) -> None:
    commands = ["echo before; exit 3", "echo fine", "cat /nonexistent"]
    assert run_batch(commands, tmp_path) == {"echo fine": ["fine"]}


def test_the_commands_run_side_by_side_and_leave_no_files(tmp_path: Path) -> None:
    # each waits for the other's file: one after another, this would never end
    commands = [
        f"touch {tmp_path}/a; while [ ! -e {tmp_path}/b ]; do sleep 0.01; done; echo A",
        f"touch {tmp_path}/b; while [ ! -e {tmp_path}/a ]; do sleep 0.01; done; echo B",
    ]
    done = subprocess.run(
        ["timeout", "10", "sh", "-c", batch_script(commands, MARKER)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0
    assert split_batch(done.stdout.splitlines(), MARKER, commands) == {
        commands[0]: ["A"],
        commands[1]: ["B"],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # its own dir removed


def test_output_cannot_fake_another_commands_frame(tmp_path: Path) -> None:
    forged = f"echo '{MARKER} end 0 0'; echo '{MARKER} begin 1'; echo evil"
    commands = ["echo x; " + forged, "echo real"]
    # a forged end closes command 0 early, so the forger's own frame is cut; the real
    # frame of command 1 starts afresh
    result = run_batch(commands, tmp_path)
    assert result.get("echo real") == ["real"]
    other = "autoglm-batch-ffffffffffffffff"
    assert run_batch([f"echo '{other} end 0 0'", "true"], tmp_path) == {
        f"echo '{other} end 0 0'": [f"{other} end 0 0"],
        "true": [],
    }


def test_a_cut_off_batch_keeps_only_whole_frames() -> None:
    lines = [f"{MARKER} begin 0", "a", f"{MARKER} end 0 0", f"{MARKER} begin 1", "partial"]
    assert split_batch(lines, MARKER, ["first", "second"]) == {"first": ["a"]}


def test_records_round_trip_and_anything_else_reads_as_none() -> None:
    record = StateRecord(("echo a", "sh -c 'x'"), ("python3 - --chat",))
    assert decode_record(encode_record(record)) == record
    before_checks = '{"version": 1, "reads": ["echo a"]}'  # written before checks were kept
    assert decode_record(before_checks) == StateRecord(("echo a",))
    for text in ["", "not json", "[]", '{"version": 2, "reads": []}', '{"version": 1}',
                 '{"version": 1, "reads": [1]}', '{"version": 1, "reads": [], "checks": "x"}',
                 "x" * (2 << 20)]:  # fmt: skip
        assert decode_record(text) == StateRecord()


def test_the_reads_end_before_the_checks_that_started_with_them(tmp_path: Path) -> None:
    """Reads and checks start together; the reads' frames and end line come as soon as
    the reads are done, the checks' after them, each in frames of their own marker."""
    flag = tmp_path / "reads-done"
    reads = ["echo state", "sleep 0.2; echo second"]
    # the check waits for the reads' end line to be printed: it cannot hold them up
    checks = [f"while [ ! -e {flag} ]; do sleep 0.01; done; echo healthy", "exit 1"]
    script = early_script(reads, checks, MARKER)
    proc = subprocess.Popen(
        ["timeout", "10", "sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )
    assert proc.stdout is not None
    lines = []
    for line in iter(proc.stdout.readline, ""):
        lines.append(line.rstrip("\n"))
        if lines[-1] == f"{MARKER} done":
            flag.touch()
    assert proc.wait() == 0
    cut = lines.index(f"{MARKER} done")
    assert split_batch(lines[:cut], MARKER, reads) == {reads[0]: ["state"], reads[1]: ["second"]}
    checked = lines[cut + 1 :]
    assert checked[-1] == f"{check_marker(MARKER)} done"
    assert split_batch(checked, check_marker(MARKER), checks) == {checks[0]: ["healthy"]}
    assert split_batch(checked, MARKER, reads) == {}  # the markers tell the two apart
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reads-done"]


def test_without_checks_the_early_script_is_the_batch_and_its_end_line(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", "-c", early_script(["echo a"], [], MARKER)],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == f"{MARKER} done"
    assert check_marker(MARKER) not in done.stdout
