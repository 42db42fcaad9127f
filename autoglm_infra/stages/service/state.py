"""What the service stage reads from a host, and when the service must (re)start. Pure.

One remote command (`service_snapshot_script`) reads the managed files, the service's
systemd state, whether the service user exists, and the *inputs* the running service
was started with. The inputs record lists the sha256 of every file whose change needs a
restart (unit, API key, the venv's lock stamp, the model plan and file stamps); it is
written on the host, from the host's own files, right after a successful (re)start. A
converge restarts when the expected inputs differ from the record, when the service is
not active, or when an earlier stage of the same run changes the venv or the model.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from autoglm_infra.common.snapshot import FileState, Snapshot, parse_snapshot, snapshot_script

INPUTS_RECORD = "/var/lib/autoglm/autoglm-serve.inputs"
MISSING = "missing"


@dataclass(frozen=True)
class UnitState:
    active: str = "unknown"  # ActiveState: active, inactive, failed, activating, ...
    enabled: str = ""  # UnitFileState: enabled, disabled, "" (no unit file)
    systemd: bool = False  # systemctl answered (PID 1 is systemd)


@dataclass(frozen=True)
class ServiceSnapshot:
    files: Snapshot
    unit: UnitState
    dirs: dict[str, str | None] = field(default_factory=dict)  # path -> "mode owner group"
    user_exists: bool = False


def service_snapshot_script(
    unit_name: str,
    user: str,
    files: Sequence[str],
    dirs: Sequence[str],
    read_text: Sequence[str] = (),
) -> str:
    unit = shlex.quote(unit_name)
    parts = [snapshot_script(list(files), [], list(read_text), [])]
    parts.append(
        f"systemctl show -p ActiveState -p UnitFileState {unit} 2>/dev/null | sed 's/^/U /'"
    )
    parts.append(f"id -u {shlex.quote(user)} >/dev/null 2>&1 && echo 'S user 1' || echo 'S user 0'")
    for path in dirs:
        q = shlex.quote(path)
        parts.append(
            f"if [ -d {q} ]; then echo \"D $(stat -c '%a %U %G' {q}) {path}\"; "
            f"else echo 'D - {path}'; fi"
        )
    parts.append("true")
    return "; ".join(parts)


def parse_service_snapshot(lines: list[str]) -> ServiceSnapshot:
    rest: list[str] = []
    props: dict[str, str] = {}
    dirs: dict[str, str | None] = {}
    user_exists = False
    for line in lines:
        if line.startswith("U "):
            name, _, value = line[2:].partition("=")
            props[name] = value
        elif line.startswith("S user "):
            user_exists = line.endswith(" 1")
        elif line.startswith("D "):
            if line.startswith("D - "):
                dirs[line[4:]] = None
            else:
                mode, owner, group, path = line[2:].split(" ", 3)
                dirs[path] = f"{mode} {owner} {group}"
        else:
            rest.append(line)
    unit = UnitState(
        active=props.get("ActiveState", "unknown"),
        enabled=props.get("UnitFileState", ""),
        systemd="ActiveState" in props,
    )
    return ServiceSnapshot(parse_snapshot(rest), unit, dirs, user_exists)


def inputs_text(digests: Sequence[tuple[str, str | None]]) -> str:
    """The inputs record: 'path sha256' per input, 'path missing' when absent."""
    return "".join(f"{path} {digest or MISSING}\n" for path, digest in digests)


def expected_inputs(paths: Sequence[str], snapshot: Snapshot, contents: dict[str, bytes]) -> str:
    """Inputs as they will be once this stage wrote `contents` (path -> bytes it writes)."""
    digests: list[tuple[str, str | None]] = []
    for path in paths:
        if path in contents:
            digests.append((path, hashlib.sha256(contents[path]).hexdigest()))
        else:
            state: FileState | None = snapshot.files.get(path)
            digests.append((path, state.sha256 if state else None))
    return inputs_text(digests)


def record_inputs_command(paths: Sequence[str], record: str = INPUTS_RECORD) -> str:
    """sh writing the inputs record from the host's files (same format as inputs_text)."""
    q = shlex.quote(record)
    loop = " ".join(shlex.quote(p) for p in paths)
    return (
        f'mkdir -p $(dirname {q}) && for f in {loop}; do if [ -f "$f" ]; then '
        f'printf \'%s %s\\n\' "$f" "$(sha256sum < "$f" | cut -d\' \' -f1)"; '
        f"else printf '%s {MISSING}\\n' \"$f\"; fi; done > {q}.new && mv -f {q}.new {q}"
    )


# A unit already starting with the current configuration (a converge right after boot, or
# while the engine loads the model) is waited for: a restart would throw that work away.
JOIN_START = "service is starting with the current configuration: its start is awaited"


def start_verb(reasons: Sequence[str]) -> str:
    """`start` joins a start job already under way (and waits for it); else `restart`."""
    return "start" if list(reasons) == [JOIN_START] else "restart"


def restart_reasons(
    unit: UnitState,
    recorded_inputs: str | None,
    expected: str,
    upstream_changes: Sequence[str] = (),
) -> list[str]:
    """Why the service must be (re)started now; empty when it is running as configured."""
    reasons: list[str] = []
    if unit.active == "activating" and recorded_inputs == expected and not upstream_changes:
        return [JOIN_START]
    if unit.active != "active":
        reasons.append(f"service is {unit.active}")
    elif recorded_inputs != expected:
        changed = _changed_inputs(recorded_inputs or "", expected)
        reasons.append("changed: " + (", ".join(changed) if changed else "inputs record"))
    if upstream_changes:
        reasons.append("this run changes: " + "; ".join(upstream_changes[:3]))
    return reasons


def _changed_inputs(recorded: str, expected: str) -> list[str]:
    def parse(text: str) -> dict[str, str]:
        return dict(line.rsplit(" ", 1) for line in text.splitlines() if " " in line)

    old, new = parse(recorded), parse(expected)
    return [path for path in new if old.get(path) != new[path]]
