"""Validated settings and cached facts for the host a deploy file is running for."""

from __future__ import annotations

from typing import Any

from pyinfra import host, state
from pyinfra.api.exceptions import PyinfraError

from autoglm_infra.common.fleet import InventoryEntry, duplicate_problems
from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.config.schema import Settings
from autoglm_infra.config.validate import ConfigError, find_problems
from autoglm_infra.pyinfra_ext.facts import GpuProbeFact, HostProfileFact
from autoglm_infra.pyinfra_ext.run_key import host_key, run_key
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stack.adopt import HostPlan, host_plan
from autoglm_infra.stack.installed import installed_stack
from autoglm_infra.stages.nvidia import files as nf
from autoglm_infra.stages.nvidia.gpu_checks import GpuProbe


class InvalidConfiguration(PyinfraError):
    """pyinfra prints PyinfraError messages without a traceback: user mistakes are not bugs."""


# Per pyinfra State (one per CLI run, several in tests): validated hosts and cached facts.
_validated: dict[int, bool] = {}
_profiles: dict[tuple[int, str], HostProfile] = {}
_gpu_probes: dict[tuple[int, str], GpuProbe] = {}


def _validate_all_hosts() -> None:
    """Check every active host before any operation is queued, so one run reports all."""
    key = run_key()
    if _validated.get(key):
        return
    problems = {h.name: found for h in state.inventory if (found := find_problems(h.data.dict()))}
    if problems:
        raise InvalidConfiguration(str(ConfigError(problems)))
    if twice := duplicate_problems(
        InventoryEntry(
            "all", h.name, f"{h.data.get('ssh_hostname') or h.name}:{h.data.get('ssh_port') or 22}"
        )
        for h in state.inventory
    ):
        raise InvalidConfiguration(
            "inventory: " + "; ".join(twice) + "; nothing was changed on any host"
        )
    _validated[key] = True


def host_settings() -> Settings:
    """Typed settings of the current host (validating all hosts on first use)."""
    _validate_all_hosts()
    data: dict[str, Any] = host.data.dict()
    return Settings.model_validate(data)


def host_profile(disk_path: str) -> HostProfile:
    """The host's profile, fetched once per run: pyinfra does not cache facts itself."""
    key = host_key()
    if key not in _profiles:
        _profiles[key] = read_state(HostProfileFact, disk_path=disk_path)
    return _profiles[key]


def host_gpu_probe() -> GpuProbe:
    """nvidia-smi, modules, NVIDIA packages, holds and the driver's owner, read once per run."""
    key = host_key()
    if key not in _gpu_probes:
        _gpu_probes[key] = read_state(GpuProbeFact, package_patterns=list(nf.PACKAGE_PATTERNS))
    return _gpu_probes[key]


def host_plan_for(settings: Settings, profile: HostProfile) -> HostPlan:
    """The stack plan with what the host already has (GPU probe); raises StackError."""
    return host_plan(settings, profile, installed_stack(host_gpu_probe()))
