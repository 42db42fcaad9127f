"""Turn validated settings and a host profile into a stack plan. Pure."""

from __future__ import annotations

from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.config.schema import Settings
from autoglm_infra.stack.gpus import GpuDevice
from autoglm_infra.stack.resolver import (
    OsInfo,
    StackPlan,
    StackRequest,
    resolve_stack,
)

NVIDIA_VENDOR = "0x10de"


def stack_request(settings: Settings, profile: HostProfile) -> StackRequest:
    return StackRequest(
        os=OsInfo(distro=profile.os_id, version=profile.os_version, arch=profile.arch),
        gpus=tuple(GpuDevice(NVIDIA_VENDOR, g.device_id) for g in profile.gpus),
        driver_branch=settings.nvidia_driver_branch,
        driver_version=settings.nvidia_driver_version,
        driver_flavour=settings.nvidia_driver_flavour,
        cuda_version=settings.cuda_version,
        cudnn_version=settings.cudnn_version,
        # the CPU engine (GPU-less test hosts) still plans vLLM's NVIDIA stack
        engine="sglang" if settings.serve_engine == "sglang" else "vllm",
        engine_version=settings.serve_engine_version,
        repo_base_url=settings.nvidia_repo_base_url,
    )


def plan_for_host(settings: Settings, profile: HostProfile) -> StackPlan:
    """Raises StackError (a ValueError) with the numbers and the fix."""
    return resolve_stack(stack_request(settings, profile))


def plan_packages(plan: StackPlan) -> list[tuple[str, str]]:
    """(name, exact version) of every package the plan installs, driver first."""
    every = (*plan.driver_packages, *plan.cuda_packages, *plan.cudnn_packages)
    return [(p.name, p.version) for p in every]
