"""The doctor's one remote command: model listing, unit, venv, caches, containers, reachability
and the smoke tool, each section printing tagged lines (see autoglm_infra/doctor_probe.py).

Read-only: `pip check`, `test -w` as the service user, `docker inspect` and HTTP GETs.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.api import FactBase

from autoglm_infra.doctor_probe import (
    DoctorProbe,
    cache_section,
    docker_section,
    model_section,
    parse_probe,
    reach_section,
    unit_section,
    venv_section,
)
from autoglm_infra.model_state import listing_script
from autoglm_infra.pyinfra_ext.verify_ops import smoke_command


def doctor_script(
    model_dir: str,
    unit: str,
    venv_dir: str | None,
    user: str,
    cache_dirs: Sequence[str],
    targets: Sequence[tuple[str, str]],
    env: Sequence[tuple[str, str]],
    smoke_args: Sequence[str],
) -> str:
    sections = [
        "export LC_ALL=C",
        listing_script(model_dir),
        model_section(model_dir),
        unit_section(unit),
        venv_section(venv_dir) if venv_dir else "true",
        cache_section(user, cache_dirs),
        docker_section(),
        reach_section(targets, dict(env)),
        # the heredoc must end on its own line, so the group closes on the next one
        f"{{ {smoke_command(smoke_args)}\n}} | sed 's/^/SM /'",
        "true",
    ]
    return "\n".join(sections)


class DoctorProbeFact(FactBase[DoctorProbe]):
    """Everything the doctor's stage checks read, in one command."""

    def command(self, script: str) -> str:  # type: ignore[override]
        """`script` is `doctor_script(...)`: built once, in one place."""
        return script

    def process(self, output: list[str]) -> DoctorProbe:
        return parse_probe(output)
