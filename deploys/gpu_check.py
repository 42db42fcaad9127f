"""GPU acceptance: read-only checks of the NVIDIA stack against the plan. Changes nothing.

    pyinfra inventories/prod.py deploys/gpu_check.py

Prints one table per host (check, status, evidence, fix) and fails the host when any
check fails: no GPU, nvidia-smi broken, driver or module not the planned version, the
driver too old for the planned CUDA, packages not pinned, a pending reboot.
Set AUTOGLM_CHECKS_JSON=<dir> to also write <dir>/<host>.gpu_check.json.
"""

import os
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api.exceptions import PyinfraError

from autoglm_infra import nvidia_files as nf
from autoglm_infra.checks import Check, failed, format_table, to_json
from autoglm_infra.gpu_checks import evaluate_gpu
from autoglm_infra.pyinfra_ext.facts import GpuProbeFact
from autoglm_infra.pyinfra_ext.settings import host_profile, host_settings
from autoglm_infra.stack_request import plan_for_host, plan_packages

settings = host_settings()
profile = host_profile(settings.model_dir)
probe = host.get_fact(GpuProbeFact, package_patterns=list(nf.PACKAGE_PATTERNS))
try:
    plan = plan_for_host(settings, profile)
except ValueError as exc:  # StackError: the configuration cannot work on this host
    checks = [Check("stack plan", "fail", str(exc), "fix the nvidia_* / cuda_* keys")]
else:
    checks = evaluate_gpu(
        profile, probe, plan.driver_version, plan.cuda_version, plan_packages(plan)
    )

table = format_table(host.name, checks)
logger.info(table)
if out_dir := os.environ.get("AUTOGLM_CHECKS_JSON"):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, f"{host.name}.gpu_check.json").write_text(to_json(host.name, checks) + "\n")
if failed(checks):
    names = ", ".join(c.name for c in failed(checks))
    raise PyinfraError(f"GPU acceptance failed on {host.name}: {names} (table above)")
