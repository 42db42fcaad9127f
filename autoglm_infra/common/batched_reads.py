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

RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20  # a record is a few KiB; anything larger is not ours


def batch_script(commands: Sequence[str], marker: str) -> str:
    """POSIX sh running the commands at once, each as pyinfra would (`sh -c`), then
    printing each one's output between marker lines, in order.

    They are reads: running them side by side returns what one after another would, in
    the time of the slowest. Outputs wait in a private temporary directory, removed on
    exit. `marker` must be unguessable (a random token per run), so no command's output
    can fake a frame. Each frame ends with the command's exit status; the `\\n` before
    the end line keeps it on its own line when the output lacks a final newline.
    """
    run = "".join(
        f'( sh -c {shlex.quote(command)} </dev/null >"$d/{i}" 2>/dev/null; '
        f'echo $? >"$d/{i}.rc" ) & '
        for i, command in enumerate(commands)
    )
    show = "; ".join(
        f"echo '{marker} begin {i}'; cat \"$d/{i}\"; "
        f'printf \'\\n{marker} end {i} %s\\n\' "$(cat "$d/{i}.rc")"'
        for i in range(len(commands))
    )
    return f"d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT; {run}wait; {show}"


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


def encode_record(commands: Sequence[str]) -> str:
    return json.dumps({"version": RECORD_VERSION, "reads": list(commands)}, indent=1)


def decode_record(text: str) -> list[str]:
    """The commands of a record; [] for anything that is not a record of this version."""
    if len(text) > MAX_RECORD_BYTES:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return []
    reads = data.get("reads")
    if not isinstance(reads, list) or not all(isinstance(r, str) for r in reads):
        return []
    return list(reads)
