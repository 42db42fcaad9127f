"""Scenario tests for the pure stack resolver (autoglm_infra.stack.resolver)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm_infra.stack import (
    DEFAULT_TABLE_PATH,
    GpuDevice,
    OsInfo,
    StackError,
    StackPlan,
    StackRequest,
    StackTable,
    load_stack_table,
    resolve_stack,
)
from autoglm_infra.stack.facts_table import parse_version

NVIDIA = "0x10de"
H100_SXM = GpuDevice(NVIDIA, "0x2330")
H200 = GpuDevice(NVIDIA, "0x2335")
RTX_4090 = GpuDevice(NVIDIA, "0x2684")
RTX_5090 = GpuDevice(NVIDIA, "0x2b85")
V100 = GpuDevice(NVIDIA, "0x1db4")
P100 = GpuDevice(NVIDIA, "0x15f8")
T4 = GpuDevice(NVIDIA, "0x1eb8")

DEBIAN_12 = OsInfo("debian", "12", "x86_64")
UBUNTU_2204 = OsInfo("ubuntu", "22.04", "x86_64")
UBUNTU_2404 = OsInfo("ubuntu", "24.04", "x86_64")
UBUNTU_2404_ARM = OsInfo("ubuntu", "24.04", "aarch64")


@pytest.fixture(scope="module")
def table() -> StackTable:
    return load_stack_table()


def resolve(table: StackTable, os: OsInfo = UBUNTU_2204, **kwargs: Any) -> StackPlan:
    """These scenarios test the resolver's rules on the Open-AutoGLM README release (vLLM
    0.12.0); serve_engine_version=auto and the newer releases are in test_stack_engines.py."""
    if kwargs.get("engine", "vllm") == "vllm":
        kwargs.setdefault("engine_version", "0.12.0")
    return resolve_stack(StackRequest(os=os, **kwargs), table)


def specs(plan: StackPlan) -> list[str]:
    return [p.spec for p in (*plan.driver_packages, *plan.cuda_packages, *plan.cudnn_packages)]


def table_with(mutate: Any) -> StackTable:
    raw = yaml.safe_load(DEFAULT_TABLE_PATH.read_text(encoding="utf-8"))
    mutate(raw)
    return StackTable.model_validate(raw)


# -- representative hosts ------------------------------------------------------------------


def test_debian12_h100_auto_gets_lts_580_open_and_engine_default_cu128(table: StackTable) -> None:
    plan = resolve(table, DEBIAN_12, gpus=(H100_SXM,))

    assert plan.repo_url == (
        "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"
    )
    assert (plan.driver_branch, plan.driver_version, plan.driver_flavour) == (
        580,
        "580.95.05",
        "open",
    )
    assert [p.spec for p in plan.driver_packages] == ["nvidia-open-580=580.95.05-1"]
    assert [p.spec for p in plan.cuda_packages] == ["cuda-toolkit-12-8=12.8.1-1"]
    assert (plan.cuda_version, plan.torch_flavour) == ("12.8", "cu128")
    assert (plan.engine, plan.engine_version, plan.torch_version) == ("vllm", "0.12.0", "2.9.0")
    assert [p.spec for p in plan.cudnn_packages] == [
        "cudnn9-cuda-12=9.10.2.21-1",
        "libcudnn9-cuda-12=9.10.2.21-1",
    ]
    assert any("nvidia_driver_branch auto -> 580" in n and "LTS" in n for n in plan.notes)
    assert any("nvidia_driver_flavour auto -> open" in n for n in plan.notes)
    assert any("cuda_version auto -> 12.8" in n for n in plan.notes)


def test_ubuntu2404_rtx4090_with_cuda_128_pins_toolkit_and_cu128_wheel(table: StackTable) -> None:
    plan = resolve(table, UBUNTU_2404, gpus=(RTX_4090,), cuda_version="12.8")

    assert plan.repo_url.endswith("/ubuntu2404/x86_64/")
    assert plan.driver_flavour == "open"
    # NVIDIA's R580 open recipe; nvidia-open-580 conflicts with cuda-drivers-580
    assert [p.spec for p in plan.driver_packages] == ["nvidia-open-580=580.95.05-0ubuntu1"]
    assert [p.spec for p in plan.cuda_packages] == ["cuda-toolkit-12-8=12.8.1-1"]
    assert (plan.cuda_version, plan.torch_flavour) == ("12.8", "cu128")
    # PyPI's vllm 0.12.0 + torch 2.9.0 pairing is a verified row: no caveat in the plan.
    assert not any("verified: false" in n and "vllm" in n for n in plan.notes)


def test_v100_auto_gets_proprietary_modules_and_cudnn_that_still_supports_volta(
    table: StackTable,
) -> None:
    plan = resolve(table, gpus=(V100,))

    assert plan.driver_flavour == "proprietary"
    assert [p.spec for p in plan.driver_packages] == ["cuda-drivers-580=580.95.05-0ubuntu1"]
    assert plan.cudnn_version == "9.10.2.21"  # 9.11+ dropped pre-Turing GPUs
    assert any("predates Turing" in n for n in plan.notes)


def test_arm64_ubuntu2404_uses_the_sbsa_repo_path(table: StackTable) -> None:
    plan = resolve(table, UBUNTU_2404_ARM, gpus=(H200,))

    assert (
        plan.repo_url == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/sbsa/"
    )
    assert plan.torch_flavour == "cu128"


def test_arm64_alias_is_accepted(table: StackTable) -> None:
    plan = resolve(table, OsInfo("Ubuntu", "22.04", "arm64"))

    assert plan.repo_url.endswith("/ubuntu2204/sbsa/")


def test_branch_590_installs_pinning_package_first_then_unversioned_open(
    table: StackTable,
) -> None:
    plan = resolve(table, UBUNTU_2404, gpus=(H100_SXM,), driver_branch="590")

    assert [p.spec for p in plan.driver_packages] == [
        "nvidia-driver-pinning-590.48.01=590.48.01-0ubuntu1",  # PR 6049: published
        "nvidia-open=590.48.01-0ubuntu1",
    ]
    assert any("own apt transaction before the driver" in n for n in plan.notes)


def test_branch_590_proprietary_uses_unversioned_cuda_drivers(table: StackTable) -> None:
    plan = resolve(table, DEBIAN_12, gpus=(T4,), driver_branch="590", driver_flavour="proprietary")

    assert [p.spec for p in plan.driver_packages] == [
        "nvidia-driver-pinning-590.48.01=590.48.01-1",
        "cuda-drivers=590.48.01-1",
    ]


def test_unknown_pci_id_resolves_with_unknown_architecture_note(table: StackTable) -> None:
    plan = resolve(table, gpus=(GpuDevice(NVIDIA, "0xabcd"),))

    assert plan.driver_flavour == "open"
    assert any("0xabcd" in n and "unknown architecture" in n for n in plan.notes)


def test_gpu_less_host_still_resolves_packages_with_open_modules(table: StackTable) -> None:
    plan = resolve(table, DEBIAN_12)

    assert plan.driver_flavour == "open"
    assert plan.driver_packages
    assert any("no NVIDIA GPU detected" in n for n in plan.notes)


def test_non_nvidia_devices_are_ignored_with_a_note(table: StackTable) -> None:
    plan = resolve(table, gpus=(GpuDevice("0x8086", "0x56c0"), H100_SXM))

    assert plan.driver_flavour == "open"
    assert any("ignored non-NVIDIA" in n for n in plan.notes)


def test_hold_packages_cover_every_planned_package(table: StackTable) -> None:
    plan = resolve(table, DEBIAN_12, gpus=(H100_SXM,))

    planned = [p.name for p in (*plan.driver_packages, *plan.cuda_packages, *plan.cudnn_packages)]
    assert list(plan.hold_packages) == planned


def test_same_request_gives_the_same_plan(table: StackTable) -> None:
    request = StackRequest(os=UBUNTU_2404, gpus=(RTX_4090, H100_SXM), cuda_version="12.8")

    assert resolve_stack(request, table) == resolve_stack(request, table)


def test_default_table_is_used_when_none_is_given() -> None:
    plan = resolve_stack(StackRequest(os=DEBIAN_12, gpus=(H100_SXM,)))

    assert plan.driver_branch == 580


def test_mirror_base_url_replaces_nvidia_and_trailing_slash_is_tolerated(
    table: StackTable,
) -> None:
    plan = resolve(table, DEBIAN_12, repo_base_url="http://127.0.0.1:8080/cuda/repos/")

    assert plan.repo_url == "http://127.0.0.1:8080/cuda/repos/debian12/x86_64/"


def test_explicit_branch_570_with_auto_cuda_falls_back_from_a_cu129_default_to_cu128() -> None:
    def cu129_default(raw: dict[str, Any]) -> None:
        next(e for e in raw["engines"] if e["version"] == "0.12.0")["default_flavour"] = "cu129"

    plan = resolve(table_with(cu129_default), gpus=(H100_SXM,), driver_branch="570")

    assert (plan.driver_branch, plan.cuda_version, plan.torch_flavour) == (570, "12.8", "cu128")
    assert any("default flavour cu129 does not fit" in n and "575.57.08" in n for n in plan.notes)


def test_explicit_cuda_129_selects_the_cu129_wheel(table: StackTable) -> None:
    plan = resolve(table, gpus=(H100_SXM,), cuda_version="12.9")

    assert (plan.cuda_version, plan.torch_flavour) == ("12.9", "cu129")
    assert [p.spec for p in plan.cuda_packages] == ["cuda-toolkit-12-9=12.9.1-1"]


def test_cudnn_none_plans_no_cudnn_packages(table: StackTable) -> None:
    plan = resolve(table, cudnn_version="none")

    assert plan.cudnn_packages == ()
    assert plan.cudnn_version == ""


def test_cudnn_major_picks_the_newest_fitting_release(table: StackTable) -> None:
    plan = resolve(table, cuda_version="13.0", cudnn_version="9")

    assert [p.spec for p in plan.cudnn_packages] == [
        "cudnn9-cuda-13=9.17.1.4-1",
        "libcudnn9-cuda-13=9.17.1.4-1",
    ]


def test_engine_sglang_open_autoglm_release_is_resolvable(table: StackTable) -> None:
    plan = resolve(table, gpus=(H100_SXM,), engine="sglang", engine_version="0.5.6.post1")

    assert (plan.engine, plan.torch_version, plan.torch_flavour) == ("sglang", "2.9.1", "cu129")
    assert plan.lock_profile == ""  # Open-AutoGLM's README release: no lock


# -- refusals --------------------------------------------------------------------------------


def test_the_documented_branch_too_old_message(table: StackTable) -> None:
    with pytest.raises(StackError) as excinfo:
        resolve(table, driver_branch="550", cuda_version="12.8")

    assert str(excinfo.value) == (
        "cuda_version=12.8 needs NVIDIA driver >= 570.124.06, but nvidia_driver_branch=550 "
        "(550.90.07) is too old: use nvidia_driver_branch=570 or newer, or cuda_version <= 12.4"
    )
    assert excinfo.value.keys == ("cuda_version", "nvidia_driver_branch")


def test_rtx5090_on_branch_550_is_refused_with_the_fix(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"550.*RTX 5090.*Blackwell.*branch=570 or newer"):
        resolve(table, gpus=(RTX_5090,), driver_branch="550")


def test_pascal_on_a_branch_after_580_is_refused_with_the_fix(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"590.*P100.*Pascal.*branch=580 or older"):
        resolve(table, gpus=(P100,), driver_branch="590")


def test_pascal_is_refused_by_vllm_compute_capability_floor(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"engine=vllm 0.12.0 needs compute capability >= 7.0"):
        resolve(table, gpus=(P100,))


def test_blackwell_with_proprietary_modules_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"proprietary cannot drive .*RTX 5090.*use .*=open"):
        resolve(table, gpus=(RTX_5090,), driver_flavour="proprietary")


def test_volta_with_open_modules_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"open cannot drive .*V100.*>= 7.5.*proprietary"):
        resolve(table, gpus=(V100,), driver_flavour="open")


def test_volta_and_blackwell_on_one_host_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError, match="separate hosts"):
        resolve(table, gpus=(V100, RTX_5090))


def test_unsupported_os_names_what_is_supported(table: StackTable) -> None:
    with pytest.raises(StackError) as excinfo:
        resolve(table, OsInfo("ubuntu", "20.04", "x86_64"))

    message = str(excinfo.value)
    assert message.startswith("os=ubuntu 20.04 (x86_64) is not supported")
    assert "debian 12 (x86_64)" in message
    assert "ubuntu 24.04 (x86_64, aarch64)" in message


def test_debian_on_arm64_is_not_a_supported_target(table: StackTable) -> None:
    with pytest.raises(StackError, match="debian 12 \\(aarch64\\) is not supported"):
        resolve(table, OsInfo("debian", "12", "aarch64"))


def test_cuda_without_a_torch_wheel_names_available_flavours(table: StackTable) -> None:
    with pytest.raises(StackError) as excinfo:
        resolve(table, cuda_version="12.6")

    message = str(excinfo.value)
    assert "cuda_version=12.6 has no torch wheel for engine=vllm 0.12.0 (torch 2.9.0)" in message
    assert "cu128 (CUDA 12.8), cu129 (CUDA 12.9), cu130 (CUDA 13.0)" in message


def test_cu130_on_arm64_explains_the_missing_vllm_build(table: StackTable) -> None:
    with pytest.raises(StackError, match="publishes no aarch64 cu130 build"):
        resolve(table, UBUNTU_2404_ARM, cuda_version="13.0")


def test_cuda_not_published_for_ubuntu2404_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"cuda_version=12.4 is not published for ubuntu 24.04"):
        resolve(table, UBUNTU_2404, cuda_version="12.4")


def test_branch_not_published_for_the_os_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"550 is not published .*ubuntu2404.*570 or newer"):
        resolve(table, UBUNTU_2404, driver_branch="550")


def test_cudnn_without_a_build_for_the_cuda_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"cudnn_version=9.10 .*cuda_version=13.0.*use .*9.17"):
        resolve(table, cuda_version="13.0", cudnn_version="9.10")


def test_cudnn_that_dropped_the_gpu_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"9.17 has builds for CUDA 13.0-13.1 only"):
        resolve(table, gpus=(V100,), cudnn_version="9.17")


def test_auto_branch_without_a_fitting_lts_branch_is_refused(table: StackTable) -> None:
    only_570 = table_with(
        lambda raw: [b.update(default_candidate=b["branch"] == 570) for b in raw["driver_branches"]]
    )

    with pytest.raises(StackError, match=r"branch=auto found no LTS.*570 .*13.0.*explicitly"):
        resolve_stack(StackRequest(os=UBUNTU_2204, cuda_version="13.0"), only_570)


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("driver_branch", "545", "nvidia_driver_branch"),
        ("driver_branch", "five-eighty", "nvidia_driver_branch"),
        ("driver_flavour", "closed", "nvidia_driver_flavour"),
        ("cuda_version", "11.8", "cuda_version"),
        ("cudnn_version", "8", "cudnn_version"),
        ("engine", "tgi", "engine"),
        ("repo_base_url", "not a url", "nvidia_repo_base_url"),
        ("gpus", (GpuDevice(NVIDIA, "0xnothex"),), "gpus"),
    ],
)
def test_unknown_values_are_refused_naming_the_key(
    table: StackTable, field: str, value: Any, key: str
) -> None:
    with pytest.raises(StackError) as excinfo:
        resolve(table, **{field: value})

    assert str(excinfo.value).startswith(key)
    assert key in excinfo.value.keys


def test_every_plan_driver_meets_its_cuda_minimum(table: StackTable) -> None:
    plan = resolve(table, UBUNTU_2404, gpus=(RTX_5090,))
    cuda = table.cuda(plan.cuda_version)

    assert cuda is not None
    assert parse_version(plan.driver_version) >= parse_version(cuda.min_driver)
    assert specs(plan)


def test_resolver_does_not_import_pyinfra() -> None:
    code = (
        "import sys, autoglm_infra.stack.resolver, autoglm_infra.stack.gpus;"
        "sys.exit(1 if any(m.split('.')[0] == 'pyinfra' for m in sys.modules) else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, check=False)

    assert result.returncode == 0


def test_driver_version_moves_names_and_revisions_to_that_release(table: StackTable) -> None:
    """Ubuntu's revision scheme changes inside R580 (-0ubuntu1 -> -1ubuntu1 at 580.126.09)."""
    plan = resolve(table, UBUNTU_2404, gpus=(H100_SXM,), driver_version="580.126.09")
    assert plan.driver_version == "580.126.09"
    assert [p.spec for p in plan.driver_packages] == ["nvidia-open-580=580.126.09-1ubuntu1"]
    debian = resolve(table, DEBIAN_12, gpus=(T4,), driver_branch="590", driver_version="590.48.01")
    assert debian.driver_packages[0].spec == "nvidia-driver-pinning-590.48.01=590.48.01-1"
    newer = resolve(table, DEBIAN_12, driver_version="590.50.1")
    assert newer.driver_branch == 590  # the branch follows the release
    assert newer.driver_packages[0].spec == "nvidia-driver-pinning-590.50.1=590.50.1-1"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"driver_version": "580"}, r"nvidia_driver_version='580' is not a driver release"),
        (
            {"driver_branch": "570", "driver_version": "580.126.09"},
            r"not a release of nvidia_driver_branch=570: .*nvidia_driver_branch=580",
        ),
        ({"driver_version": "600.1.2"}, r"branch 600, which the table does not know"),
    ],
)
def test_driver_version_errors_name_the_keys(
    table: StackTable, kwargs: dict[str, str], expected: str
) -> None:
    with pytest.raises(StackError, match=expected):
        resolve(table, **kwargs)


def test_volta_stays_on_580_proprietary_even_with_newer_branches(table: StackTable) -> None:
    plan = resolve(table, DEBIAN_12, gpus=(V100,))
    assert (plan.driver_branch, plan.driver_flavour) == (580, "proprietary")
    assert [p.spec for p in plan.driver_packages] == ["cuda-drivers-580=580.95.05-1"]


def test_the_default_table_resolves_each_request_once_per_process_and_day(
    table: StackTable,
) -> None:
    """A fleet's hosts mostly send the same request: the plan is shared, errors are not
    cached, a plan resolved for one day is not reused on another, and an explicit table
    is always resolved afresh."""
    import datetime

    request = StackRequest(DEBIAN_12, (H100_SXM,), engine_version="0.12.0")
    first = resolve_stack(request)
    assert resolve_stack(request) is first
    assert resolve_stack(request) == resolve_stack(request, table)
    assert resolve_stack(request, table) is not resolve_stack(request, table)
    later = datetime.date.today() + datetime.timedelta(days=3650)
    assert resolve_stack(StackRequest(DEBIAN_12, (H100_SXM,), engine_version="0.12.0",
                                      today=later)) is not first  # fmt: skip
    unhashable = StackRequest(DEBIAN_12, [H100_SXM], engine_version="0.12.0")  # type: ignore[arg-type]
    assert resolve_stack(unhashable) == first
    broken = StackRequest(DEBIAN_12, (P100,), engine_version="0.12.0")
    for _ in range(2):
        with pytest.raises(StackError):
            resolve_stack(broken)
