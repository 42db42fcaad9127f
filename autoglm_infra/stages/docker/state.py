"""Docker-side state of a host, read in the same single command as the stage's snapshot. Pure.

Adds tagged lines to `common.snapshot.snapshot_script` (whose parser ignores tags it does
not know): the IDs of the images we need, the spec-hash label of the running container,
the owner of the cache volume, the unit's state and whether the model directory exists.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from autoglm_infra.common.snapshot import Snapshot, parse_snapshot, snapshot_script
from autoglm_infra.stages.docker.args import SPEC_LABEL


@dataclass(frozen=True)
class DockerState:
    snapshot: Snapshot
    images: dict[str, str] = field(default_factory=dict)  # ref -> image ID ('' when missing)
    container_hash: str = ""  # spec-hash label of the running container ('' when none)
    volume_owner: str | None = None  # "uid:gid" of the volume's directory; None: no volume
    unit_active: str = ""
    unit_enabled: str = ""
    model_dir_exists: bool = False


def docker_probe_script(
    image_refs: Sequence[str], container: str, volume: str, unit: str, model_dir: str
) -> str:
    label_format = shlex.quote(f'{{{{index .Config.Labels "{SPEC_LABEL}"}}}}')
    parts = ["if command -v docker >/dev/null 2>&1; then :"]
    for ref in image_refs:
        q = shlex.quote(ref)
        parts.append(f"echo \"DI {ref} $(docker image inspect -f '{{{{.Id}}}}' {q} 2>/dev/null)\"")
    parts.append(
        f'echo "DL $(docker inspect -f {label_format} {shlex.quote(container)} 2>/dev/null)"'
    )
    vol = shlex.quote(volume)
    parts.append(
        f"m=$(docker volume inspect -f '{{{{.Mountpoint}}}}' {vol} 2>/dev/null); "
        '[ -n "$m" ] && echo "DV $(stat -c \'%u:%g\' "$m")"'
    )
    parts.append("fi")
    u = shlex.quote(unit)
    parts.append(
        f'echo "SU $(systemctl is-active {u} 2>/dev/null) $(systemctl is-enabled {u} 2>/dev/null)"'
    )
    parts.append(f"[ -d {shlex.quote(model_dir)} ] && echo 'MD 1' || echo 'MD 0'")
    return "; ".join(parts)


def state_script(
    files: Sequence[str],
    package_patterns: Sequence[str],
    read_text: Sequence[str],
    commands: Sequence[str],
    image_refs: Sequence[str],
    container: str,
    volume: str,
    unit: str,
    model_dir: str,
) -> str:
    base = snapshot_script(list(files), list(package_patterns), list(read_text), list(commands))
    probe = docker_probe_script(image_refs, container, volume, unit, model_dir)
    return f"{base}; {probe}; true"


def parse_docker_state(lines: list[str]) -> DockerState:
    images: dict[str, str] = {}
    container_hash = ""
    volume_owner: str | None = None
    active = enabled = ""
    model_dir = False
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag == "DI":
            ref, _, image_id = rest.partition(" ")
            images[ref] = image_id.strip()
        elif tag == "DL":
            value = rest.strip()
            container_hash = "" if value == "<no value>" else value
        elif tag == "DV":
            volume_owner = rest.strip() or None
        elif tag == "SU":
            fields = rest.split()
            active = fields[0] if fields else ""
            enabled = fields[1] if len(fields) > 1 else ""
        elif tag == "MD":
            model_dir = rest.strip() == "1"
    return DockerState(
        parse_snapshot(lines), images, container_hash, volume_owner, active, enabled, model_dir
    )
