"""A host shaped like the recorded real H200 host is adopted, never stacked (issue 24).

The host gets the recorded driver's nvidia-smi (a replay of the real outputs, installed
outside apt: no dpkg package owns it), the recorded CUDA 13.0 and cuDNN 9.14 packages and
the recorded hold. With the default nvidia_driver_policy (adopt) the NVIDIA stage keeps
all of it: no second driver, no second toolkit or cuDNN, nothing downgraded, holds kept;
the second converge changes nothing and gpu_check finds nothing wrong but the missing
PCI device (a container has none). With policy manage the stage
stops before any change, naming what it found and the fix. One host for the module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_testbed.converge import converge_twice, run_pyinfra
from autoglm_testbed.hosts import SandboxHost, write_inventory
from autoglm_testbed.nvidia_repo import NvidiaRepoStandin
from autoglm_testbed.recorded_gpu import prepare_like_recorded_host, recorded_driver
from autoglm_testbed.world import sandbox_group_data

DEPLOY = "tests/sandbox/deploys/preflight_nvidia.py"
PACKAGES = "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' | sort"
STATE = f"{PACKAGES}; apt-mark showhold; find /etc /var/lib/autoglm -newer /etc/hostname | sort"


@pytest.fixture(scope="module")
def recorded_host(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    nvidia_repo: NvidiaRepoStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path, str]:
    (host,) = sandbox_hosts(1)
    prepare_like_recorded_host(host)
    before = host.ssh(PACKAGES).stdout
    inventory = tmp_path_factory.mktemp("adopt") / "inventory.py"
    write_inventory(inventory, [host], {}, sandbox_group_data(nvidia_repo))
    return host, inventory, before


def test_converge_keeps_the_hosts_driver_cuda_and_cudnn(
    recorded_host: tuple[SandboxHost, Path, str],
) -> None:
    host, inventory, before = recorded_host
    assert host.ssh("dpkg -S /usr/bin/nvidia-smi", check=False).returncode != 0  # outside apt
    first, second = converge_twice(inventory, DEPLOY)
    assert second.changed() == [], second.changed()
    log = first.stderr
    for line in (f"driver: keep: driver {recorded_driver()}", "CUDA: keep: CUDA 13.0",
                 "cuDNN: keep: the host has libcudnn9-cuda-13 9.14.0.64-1"):  # fmt: skip
        assert line in log, log[-3000:]
    # not one package installed, removed, up- or downgraded; the host's hold still there
    assert host.ssh(PACKAGES).stdout == before
    assert "libcudnn9-cuda-13" in host.ssh("apt-mark showhold").stdout.split()
    smi = host.ssh("nvidia-smi --query-gpu=driver_version --format=csv,noheader").stdout
    assert smi.strip() == "580.159.04"


def test_gpu_check_on_the_adopted_host_fails_only_for_the_missing_pci_device(
    recorded_host: tuple[SandboxHost, Path, str], tmp_path: Path
) -> None:
    """GPU acceptance fails every host without a GPU in sysfs, and a container has none:
    everything else it checks on the adopted host is ok (or skipped for want of a GPU)."""
    host, inventory, _ = recorded_host
    result = run_pyinfra(
        inventory, "deploys/gpu_check.py", env={"AUTOGLM_CHECKS_JSON": str(tmp_path)}
    )
    report = json.loads((tmp_path / f"{host.name}.gpu_check.json").read_text())
    rows = {c["name"]: c["status"] for c in report["checks"]}
    assert rows["driver: keep"] == rows["CUDA: keep"] == rows["cuDNN: keep"] == "ok", rows
    assert rows["packages"] == "ok", rows
    assert [name for name, status in rows.items() if status == "fail"] == ["gpu present"]
    assert result.returncode != 0 and result.changed() == []


def test_manage_stops_before_any_change_naming_the_driver_and_the_fix(
    recorded_host: tuple[SandboxHost, Path, str],
) -> None:
    host, inventory, _ = recorded_host
    state = host.ssh(STATE).stdout
    result = run_pyinfra(inventory, DEPLOY, "--data", "nvidia_driver_policy=manage")
    assert result.returncode != 0
    text = result.stderr
    assert "NVIDIA stage refused" in text and "driver 580.159.04" in text, text[-3000:]
    assert "installed outside apt" in text and "nvidia-uninstall" in text
    assert "nvidia_driver_policy: adopt" in text and "Traceback" not in text
    assert host.ssh(STATE).stdout == state
