"""The complete converge of one host: every stage, in the order of DESIGN.md.

A venv host gets the python env and service stages and runs the model from the venv; a
docker host (serve_mode: docker) runs it in the engine image instead and needs no venv.
Both get the expose stage (a TLS front, only when serve_expose is set) before verify.
One `StageRun` goes through all stages, so later ones see what earlier ones queued.
The stages' state reads go to the host in one batch (pyinfra_ext/state_reads.py).
"""

from __future__ import annotations

from autoglm_infra.pyinfra_ext.converge_lock import take_converge_lock
from autoglm_infra.pyinfra_ext.fleet import isolated
from autoglm_infra.pyinfra_ext.stage import current_run
from autoglm_infra.pyinfra_ext.state_reads import prefetch_state_reads, remember_state_reads
from autoglm_infra.stages.docker.deploy import docker
from autoglm_infra.stages.expose.deploy import expose
from autoglm_infra.stages.model.deploy import model
from autoglm_infra.stages.network.deploy import network
from autoglm_infra.stages.nvidia.deploy import nvidia
from autoglm_infra.stages.preflight.deploy import preflight
from autoglm_infra.stages.python_env.deploy import python_env
from autoglm_infra.stages.service.deploy import service
from autoglm_infra.stages.verify.deploy import verify

VENV_STAGES = (preflight, network, nvidia, python_env, model, service, expose, verify)
DOCKER_STAGES = (preflight, network, nvidia, model, docker, expose, verify)


def converge() -> None:
    """Converge the current host end to end."""
    run = current_run()
    # before preflight reads the host (it changes nothing, so it would not take the lock)
    with isolated("preflight"):
        take_converge_lock("preflight", run.settings.converge_lock_wait)
        prefetch_state_reads()  # every stage's read in one round trip, once the lock is held
    for stage in DOCKER_STAGES if run.settings.serve_mode == "docker" else VENV_STAGES:
        stage(run)
    remember_state_reads()
