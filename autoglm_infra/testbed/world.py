"""The sandbox world: hosts plus the stand-in servers they use, and its group data.

Production and the sandbox differ only in the data returned by `sandbox_group_data`
(URLs of the stand-ins, the test key's fingerprint, GPU-less settings). The demo and
the integration tests both build the world through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autoglm_infra.testbed.hosts import (
    DEFAULT_CACHE_DIR,
    HostSpec,
    Sandbox,
    SandboxHost,
    write_inventory,
)
from autoglm_infra.testbed.nvidia_repo import NvidiaRepoStandin

ROOT = Path(__file__).resolve().parents[2]
STANDIN_KEY_DIR = DEFAULT_CACHE_DIR.parent / "standin-archive-key"


@dataclass
class World:
    sandbox: Sandbox
    hosts: list[SandboxHost]
    nvidia_repo: NvidiaRepoStandin
    host_data: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def group_data(self) -> dict[str, object]:
        return sandbox_group_data(self.nvidia_repo)

    def write_inventory(self, path: Path, **extra: object) -> Path:
        write_inventory(path, self.hosts, self.host_data, {**self.group_data, **extra})
        return path

    def stop(self) -> None:
        self.nvidia_repo.stop()


def controller_address(sandbox: Sandbox) -> str:
    """Where hosts reach servers running on the controller (the sandbox bridge)."""
    return f"10.231.{sandbox.net}.1"


def serve_modes(hosts: list[SandboxHost]) -> dict[str, dict[str, object]]:
    """Docker-capable hosts serve in docker mode, the others from a venv."""
    return {h.name: {"serve_mode": "docker" if h.docker else "venv"} for h in hosts}


def sandbox_group_data(nvidia_repo: NvidiaRepoStandin) -> dict[str, object]:
    """Settings that point the production deploys at the sandbox's stand-ins."""
    return {
        "nvidia_repo_base_url": nvidia_repo.base_url,
        "nvidia_repo_key_fingerprint": nvidia_repo.key.fingerprint,
        # Sandbox hosts have no GPU: install the stand-in stack, skip GPU checks, and
        # never reboot (a reboot would end the nspawn container).
        "nvidia_require_gpu": False,
        "nvidia_reboot": "never",
        # CI machines have 2 cores; the tiny test model needs little RAM or disk.
        "preflight_min_cpus": 1,
        "preflight_min_mem_gib": 1,
        "preflight_min_disk_gib": 1,
    }


def boot_world(
    sandbox: Sandbox, specs: list[HostSpec], reuse: bool = True, detached: bool = False
) -> World:
    """Boot (or, with reuse, adopt the running) hosts and start the stand-ins."""
    sandbox.ensure_tools()
    sandbox.ensure_base()
    running = sandbox.hosts() if reuse else []
    if len(running) < len(specs):
        sandbox.up(specs[len(running) :])
    hosts = sandbox.hosts()
    repo = NvidiaRepoStandin(
        sandbox.state_dir / "nvidia-repo", controller_address(sandbox), STANDIN_KEY_DIR
    )
    repo.stop()  # a detached server of an earlier demo run
    repo.build()
    repo.start(detached=detached)
    return World(sandbox, hosts, repo, serve_modes(hosts))
