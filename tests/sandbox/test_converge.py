"""A real converge of sandbox hosts: NVIDIA stack from the signed stand-in repository.

One host is converged once for the module; the scenarios that need an untouched host
boot their own (2 s each).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_infra.testbed.converge import converge_twice, describe_failure, run_pyinfra
from autoglm_infra.testbed.hosts import SandboxHost
from autoglm_infra.testbed.nvidia_repo import NvidiaRepoStandin, planned_packages
from autoglm_infra.testbed.world import sandbox_group_data

MANAGED = (
    "/etc/apt/keyrings/autoglm-nvidia-cuda.gpg /etc/apt/sources.list.d/autoglm-nvidia-cuda.sources"
)

# preflight + nvidia only: the later stages are converged by test_full.py
DEPLOY = "tests/sandbox/deploys/preflight_nvidia.py"


def held_versions(host: SandboxHost) -> dict[str, tuple[str, bool]]:
    out = host.ssh(
        "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' "
        "'nvidia-*' 'cuda-*' 'cudnn*' 'libcudnn*' 2>/dev/null || true"
    ).stdout
    result = {}
    for line in out.splitlines():
        fields = line.split()  # "un name" (known, not installed) has no version
        if len(fields) != 3:
            continue
        status, name, version = fields
        if status[1] == "i":
            result[name] = (version, status[0] == "h")
    return result


def nothing_written(host: SandboxHost) -> bool:
    return host.ssh(f"ls {MANAGED} 2>/dev/null || true").stdout.strip() == ""


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    nvidia_repo: NvidiaRepoStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    from autoglm_infra.testbed.hosts import write_inventory

    (host,) = sandbox_hosts(1)
    inventory = tmp_path_factory.mktemp("converge") / "inventory.py"
    write_inventory(inventory, [host], {}, sandbox_group_data(nvidia_repo))
    return host, inventory


def planned_toolkit() -> str:
    """cuda-toolkit-12-8 with the default plan (its CUDA follows the torch flavour)."""
    return next(name for name in planned_packages() if name.startswith("cuda-toolkit-"))


def test_converge_installs_plan_and_second_run_changes_nothing(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    first, second = converge_twice(inventory, DEPLOY)
    assert first.changed(), "a fresh host must change on its first converge"
    installed = held_versions(host)
    for name in ("nvidia-open-580", planned_toolkit(), "cudnn9-cuda-12"):
        assert installed[name] == (planned_packages()[name], True), installed
    assert host.ssh("stat -c %a /etc/apt/keyrings/autoglm-nvidia-cuda.gpg").stdout.strip() == "644"
    unattended = host.ssh("cat /etc/apt/apt.conf.d/51autoglm-nvidia-no-unattended-upgrades").stdout
    assert '"nvidia-";' in unattended and '"libcudnn";' in unattended
    assert "nvidia_uvm" in host.ssh("cat /etc/modules-load.d/autoglm-nvidia-uvm.conf").stdout
    assert "no NVIDIA GPU" in second.stderr or second.returncode == 0


def test_held_packages_survive_apt_upgrade(
    world: tuple[SandboxHost, Path], nvidia_repo: NvidiaRepoStandin
) -> None:
    host, inventory = world
    run_pyinfra(inventory, DEPLOY)  # converged, whatever ran before
    before = held_versions(host)
    nvidia_repo.build(extra_newer=("nvidia-open-580", planned_toolkit()))
    try:
        host.ssh("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -q",
                 timeout=300)  # fmt: skip
        newer = host.ssh("apt-cache policy nvidia-open-580").stdout
        assert "580.95.05-9" in newer, "the newer build must be visible to apt"
        assert held_versions(host) == before
        again = run_pyinfra(inventory, DEPLOY)
        assert again.returncode == 0 and again.changed() == [], describe_failure(again)
    finally:
        nvidia_repo.build()


def test_branch_change_upgrades_cleanly_and_reholds(world: tuple[SandboxHost, Path]) -> None:
    host, inventory = world
    to_570 = run_pyinfra(inventory, DEPLOY, "--data", "nvidia_driver_branch=570")
    assert to_570.returncode == 0, describe_failure(to_570)
    installed = held_versions(host)
    assert installed["nvidia-open-570"] == (planned_packages(("570",))["nvidia-open-570"], True)
    assert "nvidia-open-580" not in installed
    back = run_pyinfra(inventory, DEPLOY)
    assert back.returncode == 0, describe_failure(back)
    installed = held_versions(host)
    assert installed["nvidia-open-580"][1] and "nvidia-open-570" not in installed


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["serve_port=70000", "serve_mode=podman", "model_revision="],
         ["serve_port = 70000", "serve_mode = 'podman'", "model_revision = ''"]),
        (["nvidia_repo_key_fingerprint=" + "A" * 40],
         ["A" * 40, "nothing was trusted or written"]),
        (["nvidia_driver_branch=550", "cuda_version=12.8"], ["cuda_version=12.8 needs"]),
        (["nvidia_require_gpu=true"], ["no NVIDIA GPU found"]),
        (["preflight_min_disk_gib=1000000"],
         ["preflight_min_disk_gib is 1000000", "GiB free at /"]),
    ],
)  # fmt: skip
def test_refusals_name_the_problem_and_change_nothing(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    nvidia_repo: NvidiaRepoStandin,
    tmp_path: Path,
    data: list[str],
    expected: list[str],
) -> None:
    from autoglm_infra.testbed.hosts import write_inventory

    (host,) = sandbox_hosts(1)
    inventory = tmp_path / "inventory.py"
    write_inventory(inventory, [host], {}, sandbox_group_data(nvidia_repo))
    extra = [arg for item in data for arg in ("--data", item)]
    result = run_pyinfra(inventory, DEPLOY, *extra)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert nothing_written(host)
    assert held_versions(host) == {}


def test_gpu_check_is_read_only_and_honest_without_a_gpu(
    world: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    host, inventory = world
    run_pyinfra(inventory, DEPLOY)  # converged, whatever ran before
    before = host.ssh("find /etc /var/lib/autoglm -newer /etc/hostname | sort; apt-mark showhold")
    result = run_pyinfra(
        inventory, "deploys/gpu_check.py", env={"AUTOGLM_CHECKS_JSON": str(tmp_path)}
    )
    assert result.returncode != 0, "a host without a GPU must not pass GPU acceptance"
    assert result.changed() == [] and result.operations == []
    assert "gpu present" in result.stderr and "no PCI display device" in result.stderr
    report = json.loads((tmp_path / f"{host.name}.gpu_check.json").read_text())
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["packages"] == "ok", report  # the converged stack is pinned and held
    assert statuses["gpu present"] == "fail" and statuses["nvidia-smi"] == "skip"
    after = host.ssh("find /etc /var/lib/autoglm -newer /etc/hostname | sort; apt-mark showhold")
    assert after.stdout == before.stdout
