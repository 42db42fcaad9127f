"""The sandbox world: hosts plus the stand-in servers they use, and its group data.

Production and the sandbox differ only in the data returned by `sandbox_group_data`
(URLs of the stand-ins, the test key's fingerprint, GPU-less settings). The demo and
the integration tests both build the world through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autoglm_infra.testbed.hosts import HostSpec, Sandbox, SandboxHost, write_inventory

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    sandbox: Sandbox
    hosts: list[SandboxHost]
    group_data: dict[str, object] = field(default_factory=dict)
    host_data: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def controller_address(self) -> str:
        """Where hosts reach servers running on the controller (the sandbox bridge)."""
        return f"10.231.{self.sandbox.net}.1"

    def write_inventory(self, path: Path) -> Path:
        write_inventory(path, self.hosts, self.host_data, self.group_data)
        return path


def serve_modes(hosts: list[SandboxHost]) -> dict[str, dict[str, object]]:
    """Docker-capable hosts serve in docker mode, the others from a venv."""
    return {h.name: {"serve_mode": "docker" if h.docker else "venv"} for h in hosts}


def sandbox_group_data() -> dict[str, object]:
    """Settings that make production deploys target the sandbox's stand-ins."""
    return {}


def boot_world(sandbox: Sandbox, specs: list[HostSpec], reuse: bool = True) -> World:
    """Boot (or, with reuse, adopt the running) hosts of `sandbox` and describe the world."""
    sandbox.ensure_tools()
    sandbox.ensure_base()
    running = sandbox.hosts() if reuse else []
    if len(running) < len(specs):
        sandbox.up(specs[len(running) :])
    hosts = sandbox.hosts()
    return World(sandbox, hosts, sandbox_group_data(), serve_modes(hosts))
