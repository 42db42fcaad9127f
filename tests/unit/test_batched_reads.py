"""One shell running several reads side by side, and their outputs told apart again."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autoglm_infra.common.batched_reads import (
    batch_script,
    decode_record,
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
    reads = ["echo a", "sh -c 'x'"]
    assert decode_record(encode_record(reads)) == reads
    for text in ["", "not json", "[]", '{"version": 2, "reads": []}', '{"version": 1}',
                 '{"version": 1, "reads": [1]}', "x" * (2 << 20)]:  # fmt: skip
        assert decode_record(text) == []
