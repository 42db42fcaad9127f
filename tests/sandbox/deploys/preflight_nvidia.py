"""The first stages of deploys/full.py, for tests of the NVIDIA stack and the doctor.

The later stages (venv, model, service) need the hub and index stand-ins and minutes of
installs; tests/sandbox/test_full.py and `make demo` converge the complete deploy.
"""

from pyinfra import local

for stage in ("deploys/preflight.py", "deploys/nvidia.py"):
    local.include(stage)
