"""GPU acceptance: read-only checks of the NVIDIA stack against the plan. Changes nothing.

    pyinfra inventories/prod.py deploys/gpu_check.py

Prints one table per host (check, status, evidence, fix) and fails the host when any
check fails: no GPU, nvidia-smi broken, driver or module not the planned version, the
driver too old for the planned CUDA, packages not pinned, a pending reboot.
Set AUTOGLM_CHECKS_JSON=<dir> to also write <dir>/<host>.gpu_check.json.
"""

from autoglm_infra.doctor.deploy import gpu_check

gpu_check()
