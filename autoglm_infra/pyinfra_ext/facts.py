"""Custom pyinfra facts. Each reads as much as possible in one remote command."""

from __future__ import annotations

from collections.abc import Sequence

from autoglm_infra.common.host_profile import HostProfile, parse_host_profile, profile_script
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.nvidia.gpu_checks import GpuProbe, gpu_probe_script, parse_gpu_probe


class HostProfileFact(TypedFact[HostProfile]):
    """OS, CPUs, RAM, free disk at the model directory, NVIDIA GPUs (sysfs) and driver."""

    def command(self, disk_path: str) -> str:
        return profile_script(disk_path)

    def process(self, output: list[str]) -> HostProfile:
        return parse_host_profile(output)


class GpuProbeFact(TypedFact[GpuProbe]):
    """nvidia-smi, the loaded modules, NVIDIA packages and holds, in one command."""

    def command(self, package_patterns: Sequence[str]) -> str:
        return gpu_probe_script(package_patterns)

    def process(self, output: list[str]) -> GpuProbe:
        return parse_gpu_probe(output)
