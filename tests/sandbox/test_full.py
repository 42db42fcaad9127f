"""The complete deploy, deploys/full.py, on a venv host and a Docker host, twice.

This is the slowest scenario (a real CPU torch venv, a model pull, Docker), so it runs once
per test session: the stages' own modules test their edge cases on their own hosts.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_testbed.converge import (
    ConvergeResult,
    converge_twice,
    describe_failure,
    run_pyinfra,
)
from autoglm_testbed.hosts import SandboxHost, write_inventory
from autoglm_testbed.world import (
    ROOT,
    TINY_MODEL_DIR,
    Standins,
    full_group_data,
    host_data_for,
)


@pytest.fixture(scope="module")
def converged(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    standins: Standins,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[SandboxHost], ConvergeResult, ConvergeResult]:
    hosts = sandbox_hosts(1) + sandbox_hosts(1, docker=True)
    inventory = tmp_path_factory.mktemp("full") / "inventory.py"
    write_inventory(inventory, hosts, host_data_for(hosts, standins), full_group_data(standins))
    first, second = converge_twice(inventory)  # raises naming what the 2nd run changed
    return hosts, first, second


def test_second_converge_changes_nothing(
    converged: tuple[list[SandboxHost], ConvergeResult, ConvergeResult],
) -> None:
    _, first, second = converged
    assert first.changed() and second.changed() == []


def test_venv_host_has_the_locked_env_and_the_verified_model(
    converged: tuple[list[SandboxHost], ConvergeResult, ConvergeResult],
) -> None:
    venv_host = converged[0][0]
    imports = venv_host.ssh(
        "/opt/autoglm/venv/bin/python -c 'import torch, transformers; print(torch.__version__)'"
    )
    assert "+cpu" in imports.stdout
    listing = venv_host.ssh(f"ls {TINY_MODEL_DIR}").stdout.split()
    assert "config.json" in listing and any(n.endswith(".safetensors") for n in listing)


def test_docker_host_runs_the_hardened_container(
    converged: tuple[list[SandboxHost], ConvergeResult, ConvergeResult],
) -> None:
    docker_host = converged[0][1]
    state = docker_host.ssh(
        "docker inspect -f '{{.State.Health.Status}} {{.HostConfig.ReadonlyRootfs}}' autoglm"
    ).stdout.split()
    assert state == ["healthy", "true"]
    assert docker_host.ssh("test -d /opt/autoglm/venv || echo absent").stdout.strip() == "absent"


def test_verify_stage_alone_completes_a_chat_on_the_venv_host(
    converged: tuple[list[SandboxHost], ConvergeResult, ConvergeResult], tmp_path: Path
) -> None:
    hosts = converged[0]
    standins_inventory = tmp_path / "inventory.py"
    # verify alone, venv host only: the docker host's stand-in image cannot chat
    venv_host = hosts[0]
    write_inventory(standins_inventory, [venv_host], {}, {"serve_engine": "cpu",
        "model_repo": "local/tiny-model", "verify_expect_reasoning": False})  # fmt: skip
    result = run_pyinfra(standins_inventory, "deploys/verify.py", "-v")
    assert result.returncode == 0, describe_failure(result)
    assert "chat completion in" in result.stderr
    assert result.changed() == []


def test_verify_stage_fails_cleanly_when_the_endpoint_is_down(
    converged: tuple[list[SandboxHost], ConvergeResult, ConvergeResult], tmp_path: Path
) -> None:
    venv_host = converged[0][0]
    inventory = tmp_path / "inventory.py"
    write_inventory(inventory, [venv_host], {}, {"serve_engine": "cpu",
        "model_repo": "local/tiny-model", "verify_expect_reasoning": False})  # fmt: skip
    venv_host.ssh("systemctl stop autoglm-serve.service")
    try:
        result = run_pyinfra(inventory, "deploys/verify.py")
    finally:
        venv_host.ssh("systemctl start autoglm-serve.service")
    assert result.returncode != 0
    assert "smoke test failed" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_an_installed_wheel_converges_from_another_directory(
    converged: tuple[list[SandboxHost], ConvergeResult, ConvergeResult],
    standins: Standins,
    tmp_path: Path,
) -> None:
    """`pip install .` into a clean venv: templates, locks and tables come as package data."""
    hosts = converged[0]
    venv, workdir = tmp_path / "venv", tmp_path / "elsewhere"
    workdir.mkdir()
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([uv, "pip", "install", "-q", "--python", python, ROOT], check=True, timeout=900)
    where = subprocess.run(
        [python, "-c", "import autoglm_infra; print(autoglm_infra.__file__)"],
        cwd=workdir, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(venv)), f"imported from {where}, not the installed wheel"
    testbed = subprocess.run([python, "-c", "import autoglm_testbed"], cwd=workdir)
    assert testbed.returncode != 0, "the testbed must not be part of what a user installs"

    deploy = workdir / "site_deploy.py"
    deploy.write_text("from autoglm_infra.stages.deploy import converge\n\nconverge()\n")
    inventory = workdir / "inventory.py"
    write_inventory(inventory, hosts, host_data_for(hosts, standins), full_group_data(standins))
    result = run_pyinfra(inventory, deploy, pyinfra=venv / "bin" / "pyinfra", cwd=workdir)
    assert result.returncode == 0, describe_failure(result)
    # the same templates, locks and tables as the checkout: the converged hosts stay as they are
    assert result.changed() == [], result.changed()
