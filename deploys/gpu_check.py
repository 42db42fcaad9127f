"""GPU acceptance: read-only checks of the NVIDIA stack against the plan. Changes nothing.

    pyinfra inventories/prod.py deploys/gpu_check.py

Prints one table per host (check, status, evidence, fix) and fails the host when any
check fails: no GPU, nvidia-smi broken, driver or module not the planned version, the
driver too old for the planned CUDA, packages not pinned, a pending reboot.
Set AUTOGLM_CHECKS_JSON=<dir> to also write <dir>/<host>.gpu_check.json.
"""

from pyinfra import host

from autoglm_infra import nvidia_files as nf
from autoglm_infra.checks import Check
from autoglm_infra.gpu_checks import evaluate_gpu
from autoglm_infra.pyinfra_ext.facts import GpuProbeFact
from autoglm_infra.pyinfra_ext.report import report_checks
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

report_checks("gpu_check", checks)
