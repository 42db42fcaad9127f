"""Read-only check results and their table: shared by the GPU acceptance deploy and the doctor.

Pure: no pyinfra import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    evidence: str
    fix: str = ""


def failed(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def format_table(host_name: str, checks: Sequence[Check]) -> str:
    """A fixed-width table, one row per check; the fix only where something is wrong."""
    width = max((len(c.name) for c in checks), default=5)
    lines = [f"{host_name}:", f"  {'check':<{width}}  status  evidence / fix"]
    for c in checks:
        lines.append(f"  {c.name:<{width}}  {c.status:<6}  {c.evidence}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"  {'':<{width}}          fix: {c.fix}")
    return "\n".join(lines)


def json_file_name(host_name: str, kind: str) -> str:
    """`<host>.<kind>.json`; connector names such as `@vagrant/local` or `@docker/abc` carry
    a slash, which must not become a directory."""
    return f"{host_name.replace('/', '_')}.{kind}.json"


def to_json(host_name: str, checks: Sequence[Check]) -> str:
    return json.dumps({"host": host_name, "checks": [asdict(c) for c in checks]}, sort_keys=True)
