"""Custom pyinfra facts. Each reads as much as possible in one remote command."""

from __future__ import annotations

from pyinfra.api import FactBase

from autoglm_infra.host_profile import HostProfile, parse_host_profile, probe_script


class HostProfileFact(FactBase[HostProfile]):
    """OS, CPUs, RAM, free disk at the model directory, NVIDIA GPUs (sysfs) and driver."""

    def command(self, disk_path: str) -> str:
        return probe_script(disk_path)

    def process(self, output: list[str]) -> HostProfile:
        return parse_host_profile(output)
