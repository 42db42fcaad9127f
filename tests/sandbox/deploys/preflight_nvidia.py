"""The first stages of deploys/full.py, for tests of the NVIDIA stack and the doctor.

The later stages (venv, model, service) need the hub and index stand-ins and minutes of
installs; tests/sandbox/test_full.py and `make demo` converge the complete deploy.
"""

from autoglm_infra.pyinfra_ext.stage import current_run
from autoglm_infra.stages.nvidia.deploy import nvidia
from autoglm_infra.stages.preflight.deploy import preflight

run = current_run()
preflight(run)
nvidia(run)
