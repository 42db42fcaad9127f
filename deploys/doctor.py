"""Doctor: read-only diagnosis of any host (also one we did not provision). Changes nothing.

    pyinfra inventories/prod.py deploys/doctor.py

One table per host: check, status (ok / warn / fail / skip), evidence and the fix. Set
AUTOGLM_CHECKS_JSON=<dir> for <dir>/<host>.doctor.json. Fails the host when a check fails.
"""

from pyinfra import host
from pyinfra.facts.server import Command

from autoglm_infra import nvidia_files as nf
from autoglm_infra.checks import Check
from autoglm_infra.doctor import exposure_check, host_checks, listeners_script, parse_listeners
from autoglm_infra.gpu_checks import evaluate_gpu
from autoglm_infra.preflight import Minimums
from autoglm_infra.pyinfra_ext.facts import GpuProbeFact
from autoglm_infra.pyinfra_ext.report import report_checks
from autoglm_infra.pyinfra_ext.settings import host_profile, host_settings
from autoglm_infra.stack_request import plan_for_host, plan_packages

settings = host_settings()
profile = host_profile(settings.model_dir)
minimums = Minimums(
    settings.preflight_min_cpus, settings.preflight_min_mem_gib, settings.preflight_min_disk_gib
)
checks = host_checks(profile, minimums)

probe = host.get_fact(GpuProbeFact, package_patterns=list(nf.PACKAGE_PATTERNS))
try:
    plan = plan_for_host(settings, profile)
except ValueError as exc:
    checks.append(Check("stack plan", "fail", str(exc), "fix the nvidia_* / cuda_* keys"))
else:
    gpu_checks = evaluate_gpu(
        profile, probe, plan.driver_version, plan.cuda_version, plan_packages(plan)
    )
    if not profile.gpus and not settings.nvidia_require_gpu:
        # A GPU-less host by configuration: its missing GPU is expected, not a failure.
        gpu_checks = [
            Check(c.name, "skip", "no NVIDIA GPU (nvidia_require_gpu: false)")
            if c.name == "gpu present"
            else c
            for c in gpu_checks
        ]
    checks += gpu_checks

listening = str(host.get_fact(Command, listeners_script()) or "")
checks.append(
    exposure_check(
        settings.serve_host, settings.serve_port, parse_listeners(listening.splitlines())
    )
)

report_checks("doctor", checks)
