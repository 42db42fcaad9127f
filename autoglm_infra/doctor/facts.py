"""The doctor's one remote command: model listing, unit, venv, caches, containers, reachability,
LSMs, mounts and the smoke tool, each section printing tagged lines (autoglm_infra/doctor/probe.py).

Read-only: `pip check`, `test`/`find` as the service user, `stat`, `findmnt`, `docker inspect`
and HTTP GETs.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoglm_infra.doctor.model import ModelContents, parse_contents
from autoglm_infra.doctor.probe import (
    END_MARK,
    DoctorProbe,
    as_user_prefix,
    cache_entries_section,
    cache_section,
    docker_section,
    lsm_section,
    model_access_section,
    model_section,
    parse_doctor_probe,
    paths_section,
    reach_section,
    unit_section,
    user_section,
    venv_section,
)
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.model.state import listing_script
from autoglm_infra.stages.python_env.venv import STAMP_FILE
from autoglm_infra.stages.verify.ops import smoke_command


def doctor_script(
    model_dir: str,
    unit: str,
    venv_dir: str | None,
    user: str,
    cache_dirs: Sequence[str],
    targets: Sequence[tuple[str, str]],
    env: Sequence[tuple[str, str]],
    smoke_args: Sequence[str],
    *,
    access_user: str | None = None,
    path_roles: Sequence[tuple[str, str]] = (),
    compile_caches: Sequence[str] = (),
    cache_home: str | None = None,
    container: str = "",
) -> str:
    """`access_user` (default `user`): who the engine runs as, a name or Docker's UID:GID;
    `path_roles`: (role, dir) whose mount, label and access are read; `compile_caches`:
    version-keyed cache roots dated against the venv; `cache_home`: tree whose files must
    all belong to `user`; `container`: Docker mode's server container, whose process the
    LSM section reads."""
    as_user = as_user_prefix(access_user or user)
    stamp = f"{venv_dir}/{STAMP_FILE}" if venv_dir else "/nonexistent"
    sections = [
        "export LC_ALL=C",
        listing_script(model_dir),
        model_section(model_dir),
        unit_section(unit),
        venv_section(venv_dir) if venv_dir else "true",
        cache_section(user, cache_dirs),
        docker_section(),
        reach_section(targets, dict(env)),
        lsm_section(unit, container=container),
        paths_section(as_user, path_roles),
        user_section(access_user or user),
        model_access_section(as_user, model_dir),
        cache_entries_section(user, stamp, compile_caches, cache_home) if cache_home else "true",
        # the heredoc must end on its own line, so the group closes on the next one
        f"{{ {smoke_command(smoke_args)}\n}} | sed 's/^/SM /'",
        f"echo {END_MARK}",
    ]
    return "\n".join(sections)


class DoctorProbeFact(TypedFact[DoctorProbe]):
    """Everything the doctor's stage checks read, in one command."""

    def command(self, script: str) -> str:  # type: ignore[override]
        """`script` is `doctor_script(...)`: built once, in one place."""
        return script

    def process(self, output: list[str]) -> DoctorProbe:
        return parse_doctor_probe(output)


class ModelContentsFact(TypedFact[ModelContents]):
    """`doctor_model_verify: full`: the model stage's helper re-hashing every file."""

    def command(self, script: str) -> str:  # type: ignore[override]
        """`script` is `doctor.model.contents_script(...)`."""
        return script

    def process(self, output: list[str]) -> ModelContents:
        return parse_contents(output)
