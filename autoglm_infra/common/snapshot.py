"""Read the state of many files and packages on a host in ONE remote command.

pyinfra runs one command per fact and does not cache facts; a stage that checks five
files and ten packages with stock facts costs ~20 round trips per re-run. A stage instead
declares what it manages, reads it all here once, and its operations compare against
that snapshot. Pure: builds the shell script and parses its output.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileState:
    sha256: str
    mode: str  # octal, e.g. "644"
    owner: str
    group: str
    text: str | None = None  # content, only for files asked for by `read_text`


@dataclass(frozen=True)
class PackageState:
    version: str
    held: bool


@dataclass(frozen=True)
class Snapshot:
    files: dict[str, FileState | None] = field(default_factory=dict)  # None: missing
    packages: dict[str, PackageState] = field(default_factory=dict)  # only installed ones
    commands: dict[str, bool] = field(default_factory=dict)  # binary -> on PATH


def snapshot_script(
    files: list[str],
    package_patterns: list[str],
    read_text: list[str] | None = None,
    commands: list[str] | None = None,
) -> str:
    """POSIX sh printing one tagged line per item; small state files are printed whole.

    All present files go to ONE `stat` and ONE `sha256sum` (five processes per file
    before: a fleet's no-op re-run spends its hosts' CPU here)."""
    parts = ["export LC_ALL=C"]
    if files:
        quoted = " ".join(shlex.quote(path) for path in files)
        parts.append(
            f"set --; for f in {quoted}; do "
            'if [ -f "$f" ]; then set -- "$@" "$f"; else printf \'M %s\\n\' "$f"; fi; done'
        )
        parts.append(
            "if [ $# -gt 0 ]; then stat -c 'FS %a %U %G %n' -- \"$@\"; "
            "sha256sum -- \"$@\" | sed 's/^/FH /'; fi"
        )
    for path in read_text or []:
        q = shlex.quote(path)
        # tab-separated: paths may contain spaces
        marker = shlex.quote(f"T\t{path}\t").replace("|", "\\|")
        parts.append(f'[ -f {q} ] && sed "s|^|"{marker}"|" {q}')
    if package_patterns:
        patterns = " ".join(shlex.quote(p) for p in package_patterns)
        parts.append(
            "dpkg-query -W -f='P ${db:Status-Abbrev} ${Package} ${Version}\\n' "
            f"{patterns} 2>/dev/null"
        )
    for name in commands or []:
        q = shlex.quote(name)
        parts.append(f"command -v {q} >/dev/null && echo 'C {name} 1' || echo 'C {name} 0'")
    parts.append("true")
    return "; ".join(parts)


def parse_snapshot(lines: list[str]) -> Snapshot:
    """Parse `snapshot_script` output (every item reports itself, present or not)."""
    found: dict[str, FileState | None] = {}
    stats: dict[str, tuple[str, str, str]] = {}
    digests: dict[str, str] = {}
    texts: dict[str, list[str]] = {}
    packages: dict[str, PackageState] = {}
    commands: dict[str, bool] = {}
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag == "FS":
            mode, owner, group, path = rest.split(" ", 3)
            stats[path] = (mode, owner, group)
        elif tag == "FH":
            digest, path = _sha256sum_line(rest)
            digests[path] = digest
        elif tag == "M":
            found[rest] = None
        elif line.startswith("T\t"):
            _, path, text = line.split("\t", 2)
            texts.setdefault(path, []).append(text)
        elif tag == "P":
            fields = rest.split()
            if len(fields) != 3:
                continue
            status, name, version = fields
            # "ii" installed, "hi" held and installed; "rc" (config files only) is not installed
            if len(status) >= 2 and status[1] == "i":
                packages[name] = PackageState(version, status[0] == "h")
        elif tag == "C":
            name, _, flag = rest.rpartition(" ")
            commands[name] = flag == "1"
    for path, (mode, owner, group) in stats.items():
        found[path] = FileState(digests.get(path, ""), mode, owner, group)  # "": unreadable
    for path, text_lines in texts.items():
        state = found.get(path)
        if state is not None:
            text = "\n".join(text_lines) + "\n"
            found[path] = FileState(state.sha256, state.mode, state.owner, state.group, text)
    return Snapshot(found, packages, commands)


def _sha256sum_line(rest: str) -> tuple[str, str]:
    """(digest, path) of a `sha256sum` line; GNU escapes a name holding \\ or a newline
    and marks such a line with a leading backslash."""
    digest, _, path = rest.partition("  ")
    if digest.startswith("\\"):
        digest = digest[1:]
        path = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), path)
    return digest, path
