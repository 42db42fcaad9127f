"""Stage 1 - preflight: validate configuration and refuse hosts that cannot work.

Read-only. Runs alone with `pyinfra INVENTORY deploys/preflight.py`.
"""

from __future__ import annotations

from pyinfra import host, logger

from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.stages.preflight.problems import (
    Minimums,
    describe_host,
    preflight_problems,
    resource_warnings,
)


@stage("preflight", 1, changes_host=False)
def preflight(run: StageRun) -> None:
    settings, profile = run.settings, run.profile
    minimums = Minimums(
        settings.preflight_min_cpus, settings.preflight_min_mem_gib, settings.preflight_min_disk_gib
    )
    problems = preflight_problems(profile, settings.nvidia_require_gpu, minimums)
    if problems:
        raise StageRefused("nothing was changed:\n" + "\n".join(f"    - {p}" for p in problems))
    for warning in resource_warnings(profile):
        logger.warning(f"{host.print_prefix}preflight: {warning}")
    logger.info(f"{host.print_prefix}preflight ok: {describe_host(profile)}")
