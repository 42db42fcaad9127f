"""Command lines for systemd unit files (ExecStart= and friends), read back unchanged."""

from __future__ import annotations

import re
from collections.abc import Sequence

_BARE = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def exec_arg(arg: str) -> str:
    """One ExecStart= token: `%` and `$` are escaped, quoting only when needed."""
    if arg == ";":
        return "\\;"  # a lone ';' separates commands in ExecStart=
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _BARE.match(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(argv: Sequence[str]) -> str:
    """An argv as systemd's ExecStart= parser splits it back."""
    return " ".join(exec_arg(a) for a in argv)
