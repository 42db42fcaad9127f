"""Several read-only commands sent as ONE remote command, their outputs told apart again.

A converge reads a host's state with one command per stage (profile, GPU probe, each
stage's snapshot): eight round trips over SSH, one after another. The controller keeps a
record of the commands a host's last converge read with and sends them in one batch when
the next converge begins; each stage then takes its own output from the batch (see
pyinfra_ext/state_reads.py). Pure: builds the script, splits its output, reads and
writes the record.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20  # a record is a few KiB; anything larger is not ours
DONE = "done"  # the word after the marker on the line that ends a batch


def batch_script(commands: Sequence[str], marker: str) -> str:
    """POSIX sh running the commands at once, each as pyinfra would (`sh -c`), then
    printing each one's output between marker lines, in order.

    They are reads: running them side by side returns what one after another would, in
    the time of the slowest. Outputs wait in a private temporary directory, removed on
    exit. `marker` must be unguessable (a random token per run), so no command's output
    can fake a frame. Each frame ends with the command's exit status; the `\\n` before
    the end line keeps it on its own line when the output lacks a final newline.
    """
    return f"{_PRIVATE_DIR}{_start(commands, '$d')}wait; {_show(commands, '$d', marker)}"


def early_script(reads: Sequence[str], checks: Sequence[str], marker: str) -> str:
    """The batch of `reads` framed by `marker`, ended by `<marker> done`; with `checks`
    (the converge's closing checks, slower) started at the same time, and printed after
    that line framed by `check_marker(marker)`, ended by `<check marker> done`. The reads
    wait for none of the checks, so the stages get their state as early as before."""
    script = f'{_PRIVATE_DIR}mkdir "$d/c"; {_start(checks, "$d/c")}'
    script += f"{_start(reads, '$d', pids='r')}wait $r; {_show(reads, '$d', marker)}; "
    script += f"echo '{marker} {DONE}'"
    if checks:
        script += f"; wait; {_show(checks, '$d/c', check_marker(marker))}; "
        script += f"echo '{check_marker(marker)} {DONE}'"
    return script


def check_marker(marker: str) -> str:
    return f"{marker}-check"


_PRIVATE_DIR = "d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT; "


def _start(commands: Sequence[str], folder: str, pids: str = "") -> str:
    """Each command in the background, its output and exit status in `folder` (a shell
    word); with `pids`, their process ids are collected in that variable (`wait $pids`)."""
    collect = f' {pids}="${pids} $!";' if pids else ""
    started = f"{pids}=; " if pids else ""
    return started + "".join(
        f'( sh -c {shlex.quote(command)} </dev/null >"{folder}/{i}" 2>/dev/null; '
        f'echo $? >"{folder}/{i}.rc" ) &{collect} '
        for i, command in enumerate(commands)
    )


def _show(commands: Sequence[str], folder: str, marker: str) -> str:
    return (
        "; ".join(
            f"echo '{marker} begin {i}'; cat \"{folder}/{i}\"; "
            f'printf \'\\n{marker} end {i} %s\\n\' "$(cat "{folder}/{i}.rc")"'
            for i in range(len(commands))
        )
        or ":"
    )


def split_batch(lines: Sequence[str], marker: str, commands: Sequence[str]) -> dict[str, list[str]]:
    """Output lines of each command that ran to its end with exit status 0, by command.

    A command missing from the result (failed, cut off, or framed wrongly) is read again
    on its own, so its errors are reported as they always were.
    """
    outputs: dict[str, list[str]] = {}
    current: int | None = None
    body: list[str] = []
    for line in lines:
        if line.startswith(f"{marker} "):
            words = line.split()
            if len(words) == 3 and words[1] == "begin" and words[2].isdigit():
                current, body = int(words[2]), []
                continue
            if len(words) == 4 and words[1] == "end" and current == _int(words[2]):
                if words[3] == "0" and current is not None and current < len(commands):
                    if body and body[-1] == "":
                        body.pop()  # the newline printed before the end line
                    outputs[commands[current]] = body
                current = None
                continue
        if current is not None:
            body.append(line)
    return outputs


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class StateRecord:
    """What a host's last converge read: its state reads (while operations were collected)
    and its closing checks (the smoke test, run after everything else)."""

    reads: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()


def encode_record(record: StateRecord) -> str:
    data = {"version": RECORD_VERSION, "reads": list(record.reads), "checks": list(record.checks)}
    return json.dumps(data, indent=1)


def decode_record(text: str) -> StateRecord:
    """The record in `text`; an empty one for anything that is not a record of this version
    (a record from before checks were kept has none)."""
    if len(text) > MAX_RECORD_BYTES:
        return StateRecord()
    try:
        data = json.loads(text)
    except ValueError:
        return StateRecord()
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return StateRecord()
    reads, checks = _strings(data.get("reads")), _strings(data.get("checks", []))
    if reads is None or checks is None:
        return StateRecord()
    return StateRecord(reads, checks)


def _strings(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)
