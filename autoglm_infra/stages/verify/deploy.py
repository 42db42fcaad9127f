"""Stage 8 - verify: the endpoint answers /health, lists the model and completes a chat.

Runs alone with `pyinfra INVENTORY deploys/verify.py`; read-only. The request runs ON the
host (the endpoint listens on loopback), with 429/503 retried (1 s, doubling). Against the
real model it also requires a non-trivial <think> block: a very short chain of thought
means a broken deployment (Open-AutoGLM's own checker says so).
"""

from __future__ import annotations

import ipaddress

from autoglm_infra.pyinfra_ext.stage import StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import plan_check
from autoglm_infra.stages.docker.args import api_key_path
from autoglm_infra.stages.service.engine_args import served_model_name
from autoglm_infra.stages.service.unit import CREDENTIAL_PATH
from autoglm_infra.stages.verify.ops import smoke_command, smoke_test


@stage("verify", 9, changes_host=False)
def verify(run: StageRun) -> None:
    settings = run.settings
    address = ipaddress.ip_address(settings.serve_host)
    if address.is_unspecified:  # bound to every interface: loopback reaches it too
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    netloc = f"[{address}]" if address.version == 6 else str(address)
    docker_mode = settings.serve_mode == "docker"
    key_file = api_key_path(settings.docker_api_key_delivery) if docker_mode else CREDENTIAL_PATH
    args = [
        "--base-url", f"http://{netloc}:{settings.serve_port}",
        "--model", served_model_name(settings),
        "--key-file", key_file,
        "--tries", str(settings.verify_tries),
    ]  # fmt: skip
    if not settings.verify_chat:
        args.append("--no-chat")
    elif settings.verify_expect_reasoning:
        args.append("--expect-reasoning")
    plan_check(smoke_command(args))  # the next converge starts it when the host connects
    smoke_test(name="Verify: smoke test of the endpoint", args=args)
