"""Converge a host end to end: every stage that exists, in the order of DESIGN.md.

pyinfra inventories/prod.py deploys/full.py

A venv host gets the python env stage and runs the model from it; a docker host (serve_mode:
docker) runs the model in the engine image instead and needs no venv.
"""

from pyinfra import local

from autoglm_infra.pyinfra_ext.settings import host_settings

VENV_ONLY = {"deploys/python_env.py", "deploys/service.py"}
DOCKER_ONLY = {"deploys/docker.py"}
STAGES = [
    "deploys/preflight.py",
    "deploys/network.py",
    "deploys/nvidia.py",
    "deploys/python_env.py",
    "deploys/model.py",
    "deploys/service.py",
    "deploys/docker.py",
    "deploys/verify.py",
]

serve_mode = host_settings().serve_mode
for stage in STAGES:
    if stage in (DOCKER_ONLY if serve_mode == "venv" else VENV_ONLY):
        continue
    local.include(stage)
