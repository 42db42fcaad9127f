"""Engine releases in the resolver: serve_engine_version=auto, the current vLLM rows, driver
branches 590-620, end-of-life warnings and known torch defects (stack/nvidia_stack.yaml)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import yaml

from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.config.schema import Settings
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
from autoglm_infra.stack.request import plan_for_host, stack_request

NVIDIA = "0x10de"
H100_SXM = GpuDevice(NVIDIA, "0x2330")
H200 = GpuDevice(NVIDIA, "0x2335")
V100 = GpuDevice(NVIDIA, "0x1db4")
RTX_5090 = GpuDevice(NVIDIA, "0x2b85")
UBUNTU_2204 = OsInfo("ubuntu", "22.04", "x86_64")
UBUNTU_2404 = OsInfo("ubuntu", "24.04", "x86_64")
DEBIAN_12 = OsInfo("debian", "12", "x86_64")
# The day this table was last read against NVIDIA's lifecycle pages.
TODAY = datetime.date(2026, 12, 4)


@pytest.fixture(scope="module")
def table() -> StackTable:
    return load_stack_table()


def resolve(table: StackTable, os: OsInfo = UBUNTU_2204, **kwargs: Any) -> StackPlan:
    kwargs.setdefault("today", TODAY)
    return resolve_stack(StackRequest(os=os, **kwargs), table)


def test_new_hosts_get_vllm_0_33_on_cuda_13_and_the_lts_580_driver(table: StackTable) -> None:
    """The default must not regress a driver-580 host: R580 (580.95.05) meets CUDA 13.0 U2."""
    plan = resolve(table, gpus=(H100_SXM,))

    assert (plan.engine, plan.engine_version, plan.torch_version) == ("vllm", "0.33.0", "2.14.0")
    assert (plan.torch_flavour, plan.cuda_version, plan.pip_cudnn) == ("cu130", "13.0", "9.24.0.43")
    assert (plan.driver_branch, plan.driver_version) == (580, "580.95.05")
    assert plan.lock_profile == "vllm-0.33.0-cu130"
    assert plan.docker_image == "vllm/vllm-openai:v0.33.0"
    assert plan.warnings == ()
    assert plan.notes[0].startswith("serve_engine_version auto -> 0.33.0")


def test_the_recorded_h200_host_keeps_its_580_driver_and_gets_the_current_stack(
    table: StackTable,
) -> None:
    """The real H200 (recorded): driver 580.159.04 adopted, CUDA 13.0 toolkit on the host."""
    plan = resolve(
        table,
        UBUNTU_2404,
        gpus=(H200,),
        driver_branch="580",
        adopted_driver="580.159.04",
        prefer_cuda=("13.0",),
    )

    assert (plan.engine_version, plan.torch_flavour, plan.driver_version) == (
        "0.33.0",
        "cu130",
        "580.159.04",
    )
    assert plan.driver_packages == ()


def test_volta_falls_back_to_the_first_transformers_5_release(table: StackTable) -> None:
    """CUDA 13 wheels start at Turing (7.5): a V100 (7.0) gets vLLM 0.19.1 on CUDA 12.8."""
    plan = resolve(table, gpus=(V100,))

    assert (plan.engine_version, plan.torch_flavour, plan.lock_profile) == (
        "0.19.1",
        "cu128",
        "vllm-0.19.1-cu128",
    )
    assert plan.driver_flavour == "proprietary"
    assert "vllm 0.33.0: " in plan.notes[0] and "compute capability" in plan.notes[0]


def test_a_kept_570_driver_falls_back_and_warns_that_570_has_ended(table: StackTable) -> None:
    plan = resolve(table, gpus=(H100_SXM,), driver_branch="570", adopted_driver="570.172.08")

    assert (plan.engine_version, plan.cuda_version) == ("0.19.1", "12.8")
    assert "needs driver >= 580.95.05" in plan.notes[0]
    [warning] = plan.warnings
    assert "driver branch 570" in warning and "end of life in February 2026" in warning
    assert "nvidia_driver_branch=580" in warning


def test_an_explicit_current_release_on_an_old_branch_is_refused(table: StackTable) -> None:
    with pytest.raises(StackError) as excinfo:
        resolve(table, gpus=(H100_SXM,), engine_version="0.33.0", driver_branch="570")

    message = str(excinfo.value)
    assert "nvidia_driver_branch=570 (570.172.08) is too old for every vllm 0.33.0 wheel" in message
    assert "needs driver >= 580.95.05" in message


def test_an_explicit_release_below_its_cuda_is_refused_for_every_new_flavour(
    table: StackTable,
) -> None:
    """Minimum-driver refusal: each new flavour's CUDA against a branch below its minimum."""
    cases = [("0.33.0", "13.0", "570"), ("0.19.1", "12.8", "550"), ("0.34.0", "13.0", "570")]
    for version, cuda, branch in cases:
        with pytest.raises(StackError, match="needs NVIDIA driver >= "):
            resolve(
                table,
                gpus=(H100_SXM,),
                engine_version=version,
                cuda_version=cuda,
                driver_branch=branch,
            )


def test_vllm_0_34_resolves_but_has_no_lock(table: StackTable) -> None:
    plan = resolve(table, gpus=(H100_SXM,), engine_version="0.34.0")

    assert (plan.engine_version, plan.torch_version, plan.torch_flavour) == (
        "0.34.0",
        "2.14.0",
        "cu130",
    )
    assert plan.lock_profile == ""  # flashinfer-python==0.7.3 is not on PyPI
    assert plan.docker_image == "vllm/vllm-openai:v0.34.0"


@pytest.mark.parametrize(
    ("engine", "known"),
    [("vllm", "0.34.0, 0.33.0, 0.19.1, 0.12.0"), ("sglang", "0.5.23, 0.5.6.post1")],
)
def test_an_unknown_engine_release_names_the_known_ones(
    table: StackTable, engine: str, known: str
) -> None:
    with pytest.raises(StackError) as excinfo:
        resolve(table, engine=engine, engine_version="0.99.0")

    assert str(excinfo.value) == (
        f"serve_engine_version='0.99.0' is not a known {engine} release: use auto or one of {known}"
    )
    assert excinfo.value.keys == ("serve_engine_version",)


def test_the_open_autoglm_release_warns_about_conv3d_and_names_the_fix(table: StackTable) -> None:
    plan = resolve(table, gpus=(H100_SXM,), engine_version="0.12.0")

    assert plan.lock_profile == "vllm-cu128" and plan.pip_cudnn == "9.10.2.21"
    [warning] = plan.warnings
    assert "torch 2.9.0+cu128, cuDNN 9.10.2.21" in warning
    assert "Conv3d" in warning and "serve_engine_version: auto" in warning


def test_current_releases_carry_no_defect_warning(table: StackTable) -> None:
    for version in ("0.33.0", "0.19.1", "0.34.0"):
        assert resolve(table, gpus=(H100_SXM,), engine_version=version).warnings == ()


@pytest.mark.parametrize(
    ("branch", "today", "month"),
    [(610, datetime.date(2026, 12, 4), "August 2026"), (570, TODAY, "February 2026")],
)
def test_a_plan_on_an_ended_branch_warns_with_the_date(
    table: StackTable, branch: int, today: datetime.date, month: str
) -> None:
    plan = resolve(
        table, gpus=(H100_SXM,), engine_version="0.19.1", driver_branch=str(branch), today=today
    )

    assert any(f"reached end of life in {month}" in w for w in plan.warnings), plan.warnings


def test_a_branch_before_its_end_of_life_month_does_not_warn(table: StackTable) -> None:
    plan = resolve(table, gpus=(H100_SXM,), driver_branch="610", today=datetime.date(2026, 8, 31))

    assert plan.warnings == ()


def test_an_ended_branch_without_a_recorded_month_still_warns() -> None:
    """R550's row says "end of life" with no month; no vLLM here runs on it, so R570 is
    given that shape."""
    raw = yaml.safe_load(DEFAULT_TABLE_PATH.read_text(encoding="utf-8"))
    row = next(b for b in raw["driver_branches"] if b["branch"] == 570)
    row.pop("eol")
    row["lifecycle"] = "Production Branch, end of life"
    plan = resolve(StackTable.model_validate(raw), gpus=(V100,), driver_branch="570")

    assert any("driver branch 570" in w and "date not recorded" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("branch", "ubuntu", "debian"),
    [
        (610, ["nvidia-driver-pinning-610=610-1ubuntu1", "nvidia-open=610.57.04-1ubuntu1"],
         ["nvidia-driver-pinning-610=610-1", "nvidia-open=610.57.04-1"]),
        (615, ["nvidia-driver-pinning-615=615-1ubuntu1", "nvidia-open=615.71.09-1ubuntu1"],
         ["nvidia-driver-pinning-615=615-1", "nvidia-open=615.71.09-1"]),
    ],
)  # fmt: skip
def test_branches_after_595_install_the_pinning_package_first(
    table: StackTable, branch: int, ubuntu: list[str], debian: list[str]
) -> None:
    for os, expected in ((UBUNTU_2404, ubuntu), (DEBIAN_12, debian)):
        plan = resolve(table, os, gpus=(RTX_5090,), driver_branch=str(branch))
        assert [p.spec for p in plan.driver_packages] == expected
        assert plan.engine_version == "0.33.0"


def test_auto_never_picks_a_release_that_is_not_a_candidate(table: StackTable) -> None:
    for gpus in ((), (H100_SXM,), (V100,), (RTX_5090,)):
        plan = resolve(table, gpus=gpus)
        engine = table.engine("vllm", plan.engine_version)
        assert engine is not None and engine.default_candidate
        assert plan.lock_profile


# -- SGLang (serve_engine: sglang) ----------------------------------------------------------


def test_sglang_auto_gets_0_5_23_on_cuda_13_with_its_lock_and_image(table: StackTable) -> None:
    plan = resolve(table, DEBIAN_12, gpus=(H100_SXM,), engine="sglang")

    assert (plan.engine, plan.engine_version, plan.torch_version) == ("sglang", "0.5.23", "2.14.1")
    assert (plan.torch_flavour, plan.cuda_version, plan.pip_cudnn) == ("cu130", "13.0", "9.24.0.43")
    assert (plan.driver_branch, plan.driver_version) == (580, "580.95.05")
    assert plan.lock_profile == "sglang-0.5.23-cu130"
    assert plan.docker_image == "lmsysorg/sglang:v0.5.23"
    assert plan.warnings == ()
    assert plan.notes[0].startswith("serve_engine_version auto -> 0.5.23: newest sglang release")


def test_sglang_on_a_driver_too_old_for_cuda_13_is_refused_with_the_minimum(
    table: StackTable,
) -> None:
    for kwargs in ({"driver_branch": "570"}, {"driver_branch": "570", "engine_version": "0.5.23"}):
        with pytest.raises(StackError) as excinfo:
            resolve(table, gpus=(H100_SXM,), engine="sglang", **kwargs)
        assert str(excinfo.value) == (
            "nvidia_driver_branch=570 (570.172.08) is too old for every sglang 0.5.23 wheel: "
            "the lowest, cu130, needs driver >= 580.95.05: use a newer nvidia_driver_branch"
        )


def test_sglang_with_a_cuda_12_request_names_its_only_flavour(table: StackTable) -> None:
    with pytest.raises(StackError) as excinfo:
        resolve(table, gpus=(H100_SXM,), engine="sglang", cuda_version="12.8")

    assert "cuda_version=12.8 has no torch wheel for engine=sglang 0.5.23" in str(excinfo.value)
    assert "available flavours are cu130 (CUDA 13.0)" in str(excinfo.value)


def test_sglang_refuses_volta(table: StackTable) -> None:
    with pytest.raises(StackError, match=r"engine=sglang 0.5.23 needs compute capability >= 7.5"):
        resolve(table, gpus=(V100,), engine="sglang")


@pytest.mark.parametrize(
    ("serve_engine", "engine", "version"),
    [("sglang", "sglang", "0.5.23"), ("vllm", "vllm", "0.33.0"), ("cpu", "vllm", "0.33.0")],
)
def test_serve_engine_selects_the_engine_the_plan_resolves(
    serve_engine: str, engine: str, version: str
) -> None:
    """The CPU engine (GPU-less test hosts) keeps planning vLLM's NVIDIA stack."""
    settings = Settings(serve_engine=serve_engine)
    profile = HostProfile(os_id="debian", os_version="12", arch="x86_64")

    request = stack_request(settings, profile)
    plan = plan_for_host(settings, profile)

    assert request.engine == engine and (plan.engine, plan.engine_version) == (engine, version)
