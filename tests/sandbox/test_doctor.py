"""The doctor on a converged sandbox host: healthy is ok; each breakage is named with a fix."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoglm_infra.testbed.converge import describe_failure, run_pyinfra
from autoglm_infra.testbed.hosts import SandboxHost, write_inventory
from autoglm_infra.testbed.nvidia_repo import NvidiaRepoStandin
from autoglm_infra.testbed.world import sandbox_group_data

# preflight + nvidia only: the later stages are converged by test_full.py
DEPLOY = "tests/sandbox/deploys/preflight_nvidia.py"


@pytest.fixture(scope="module")
def converged(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    nvidia_repo: NvidiaRepoStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    (host,) = sandbox_hosts(1)
    inventory = tmp_path_factory.mktemp("doctor") / "inventory.py"
    write_inventory(inventory, [host], {}, sandbox_group_data(nvidia_repo))
    result = run_pyinfra(inventory, DEPLOY)
    assert result.returncode == 0, describe_failure(result)
    return host, inventory


def doctor(inventory: Path, out: Path, *extra: str) -> tuple[int, dict[str, dict[str, str]], str]:
    result = run_pyinfra(
        inventory, "deploys/doctor.py", *extra, env={"AUTOGLM_CHECKS_JSON": str(out)}
    )
    assert result.changed() == [] and result.operations == [], "the doctor must change nothing"
    (report_file,) = out.glob("*.doctor.json")
    checks = {c["name"]: c for c in json.loads(report_file.read_text())["checks"]}
    return result.returncode, checks, result.stderr


def test_healthy_host_has_no_failures(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    _, inventory = converged
    rc, checks, stderr = doctor(inventory, tmp_path)
    assert rc == 0, stderr[-2000:]
    assert checks["packages"]["status"] == "ok"
    assert checks["gpu present"]["status"] == "skip"  # GPU-less by configuration
    assert checks["host resources"]["status"] == "ok"


@pytest.fixture
def listener_on_all_interfaces(converged: tuple[SandboxHost, Path]) -> Iterator[int]:
    host, _ = converged
    pid = host.ssh(
        "nohup python3 -m http.server --bind 0.0.0.0 8000 >/dev/null 2>&1 & echo $!"
    ).stdout.strip()
    host.ssh("for i in $(seq 50); do ss -ltnH | grep -q ':8000 ' && break; sleep 0.1; done")
    yield 8000
    host.ssh(f"kill {pid}")


def test_endpoint_on_all_interfaces_is_named_with_the_fix(
    converged: tuple[SandboxHost, Path], listener_on_all_interfaces: int, tmp_path: Path
) -> None:
    _, inventory = converged
    rc, checks, stderr = doctor(inventory, tmp_path)
    assert rc != 0
    exposure = checks["endpoint exposure"]
    assert exposure["status"] == "fail" and "0.0.0.0" in exposure["evidence"]
    assert "127.0.0.1:PORT:PORT" in exposure["fix"]
    assert "doctor found problems" in stderr and "Traceback" not in stderr


def test_too_little_disk_is_named(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    _, inventory = converged
    rc, checks, _ = doctor(inventory, tmp_path, "--data", "preflight_min_disk_gib=1000000")
    assert rc != 0
    assert "preflight_min_disk_gib is 1000000" in checks["host resources"]["evidence"]
