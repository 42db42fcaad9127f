"""Converge a host end to end: every stage that exists, in the order of DESIGN.md.

pyinfra inventories/prod.py deploys/full.py

A venv host gets the python env stage and runs the model from it; a docker host (serve_mode:
docker) runs the model in the engine image instead and needs no venv.
"""

from autoglm_infra.stages.deploy import converge

converge()
