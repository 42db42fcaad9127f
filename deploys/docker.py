"""Stage 6 (docker mode) - Docker engine, NVIDIA container toolkit, hardened model container.

    pyinfra INVENTORY deploys/docker.py

The stage, its operations and templates live in autoglm_infra/stages/docker/.
"""

from autoglm_infra.stages.docker.deploy import docker

docker()
