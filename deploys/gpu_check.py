"""GPU acceptance: read-only checks of the NVIDIA stack against the plan. Changes nothing.

    pyinfra inventories/prod.py deploys/gpu_check.py

Prints one table per host (check, status, evidence, fix) and fails the host when any
check fails: no GPU, nvidia-smi broken, driver or module not the planned version, the
driver too old for the planned CUDA, packages not pinned, a pending reboot.
Set AUTOGLM_CHECKS_JSON=<dir> to also write <dir>/<host>.gpu_check.json.
"""

from autoglm_infra.doctor.table import gpu_rows
from autoglm_infra.pyinfra_ext.report import report_checks
from autoglm_infra.pyinfra_ext.settings import host_gpu_probe, host_profile, host_settings

settings = host_settings()
profile = host_profile(settings.model_dir)
probe = host_gpu_probe()
checks, _ = gpu_rows(settings, profile, probe)
report_checks("gpu_check", checks)
