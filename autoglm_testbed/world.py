"""The sandbox world: hosts plus the stand-in servers they use, and its group data.

Production and the sandbox differ only in the data returned by `sandbox_group_data`
(URLs of the stand-ins, the test key's fingerprint, GPU-less settings). The demo and
the integration tests both build the world through here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stages.python_env.venv import CPU_PROFILE, load_lock
from autoglm_testbed.apt_mirror import AptMirrorStandin
from autoglm_testbed.container_toolkit_repo import ContainerToolkitRepoStandin
from autoglm_testbed.hosts import (
    DEFAULT_CACHE_DIR,
    HostSpec,
    Sandbox,
    SandboxHost,
    write_inventory,
)
from autoglm_testbed.hub_standin import HubProcess
from autoglm_testbed.nvidia_repo import NvidiaRepoStandin
from autoglm_testbed.pypi_mirror import PypiMirror, WheelCache
from autoglm_testbed.standin_image import StandinImage, build_image
from autoglm_testbed.tiny_model import TINY_MODEL_VERSION, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
STANDIN_KEY_DIR = DEFAULT_CACHE_DIR.parent / "standin-archive-key"
IMAGE_CACHE = DEFAULT_CACHE_DIR.parent / "standin-image"
TINY_MODEL_CACHE = DEFAULT_CACHE_DIR.parent / "tiny-model"
TINY_REPO = "local/tiny-model"
TINY_MODEL_DIR = "/srv/autoglm/models/tiny-model"


@dataclass
class Standins:
    """Every stand-in server a complete converge needs, on the sandbox bridge."""

    nvidia_repo: NvidiaRepoStandin
    hub: HubProcess
    pypi: PypiMirror
    toolkit_repo: ContainerToolkitRepoStandin
    image: StandinImage
    lock_dir: Path
    # The Debian archive mirror air-gapped hosts install from (started only for them).
    apt_mirror: AptMirrorStandin | None = None

    def stop(self) -> None:
        for server in (self.nvidia_repo, self.hub, self.pypi, self.toolkit_repo):
            server.stop()
        if self.apt_mirror is not None:
            self.apt_mirror.stop()


@dataclass
class World:
    sandbox: Sandbox
    hosts: list[SandboxHost]
    standins: Standins
    host_data: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def nvidia_repo(self) -> NvidiaRepoStandin:
        return self.standins.nvidia_repo

    @property
    def group_data(self) -> dict[str, object]:
        return full_group_data(self.standins)

    def write_inventory(self, path: Path, **extra: object) -> Path:
        write_inventory(path, self.hosts, self.host_data, {**self.group_data, **extra})
        return path

    def stop(self) -> None:
        self.standins.stop()


def controller_address(sandbox: Sandbox) -> str:
    """Where hosts reach servers running on the controller (the sandbox bridge)."""
    return f"10.231.{sandbox.net}.1"


def host_data_for(hosts: list[SandboxHost], standins: Standins) -> dict[str, dict[str, object]]:
    """Docker-capable hosts serve in docker mode, the others from a venv; air-gapped hosts
    take the Debian archive from the apt mirror stand-in."""
    data: dict[str, dict[str, object]] = {}
    for h in hosts:
        data[h.name] = docker_host_data(standins) if h.docker else {"serve_mode": "venv"}
        if h.air_gapped:
            data[h.name].update(air_gapped_host_data(standins))
    return data


def air_gapped_host_data(standins: Standins) -> dict[str, object]:
    """Mirror settings a host without a route out needs on top of full_group_data (whose
    NVIDIA repo, hub and index already are stand-ins on the bridge)."""
    if standins.apt_mirror is None:
        raise ValueError("air-gapped hosts need the apt mirror: start_standins(apt_mirror=True)")
    return {
        "apt_mirror_url": standins.apt_mirror.url,
        "apt_security_mirror_url": standins.apt_mirror.security_url,
    }


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


def full_group_data(standins: Standins) -> dict[str, object]:
    """Settings for a complete converge against the stand-ins (venv hosts serve on CPU)."""
    return {
        **sandbox_group_data(standins.nvidia_repo),
        "hub_endpoint": standins.hub.url,
        "model_repo": TINY_REPO,
        "model_dir": TINY_MODEL_DIR,
        "model_lock_dir": str(standins.lock_dir),
        "model_disk_margin_mib": 16,
        "pip_index_url": standins.pypi.index_url,
        # The CPU lock's torch is in the index itself, not on a PyTorch-style index.
        "python_torch_index_url": None,
        "serve_engine": "cpu",
        # The hosts share this machine's cores: engines spinning a thread per core each
        # made eight concurrent smoke tests 70 times slower than one (7 s against 0.1 s).
        "serve_cpu_threads": 1,
        # The tiny model answers, but has no chain of thought to check.
        "verify_expect_reasoning": False,
    }


def docker_host_data(standins: Standins) -> dict[str, object]:
    return docker_stage_data(standins.toolkit_repo, standins.image)


def docker_stage_data(
    toolkit_repo: ContainerToolkitRepoStandin, image: StandinImage
) -> dict[str, object]:
    """Docker mode with the stand-in image: a busybox health server, not the engine.

    The engine image (vLLM, or transformers on CPU) cannot be pulled or built here: no
    registry. The stage, its flags and the container's lifecycle are real; the server
    inside only answers /health and /v1/models, and checks the API key on /v1 as vLLM does.
    """
    return {
        "serve_mode": "docker",
        "docker_engine_source": "distro",
        "docker_toolkit_repo_base_url": toolkit_repo.base_url,
        "docker_toolkit_key_fingerprint": toolkit_repo.key.fingerprint,
        "docker_image": image.image_id,
        "docker_image_tarball": str(image.tarball),
        "docker_command": image.command,
        "docker_health_cmd": image.health_cmd,
        "docker_health_interval": 1,
        "docker_health_start_period": 30,
        "docker_gpu_devices": [],
        "docker_memory": "256m",
        "docker_cpus": 1,
        "docker_pids_limit": 256,
        "docker_shm_size": "64m",
        "docker_tmp_size": "16m",
        # The stand-in image lists this name and answers no chat completions.
        "serve_model_name": "autoglm-phone-9b",
        "verify_chat": False,
    }


def tiny_model_source() -> Path:
    """The tiny real model, generated once per version into the cache (deterministic)."""
    out = TINY_MODEL_CACHE / TINY_MODEL_VERSION
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_tiny_model(tmp)
        tmp.rename(out)
    return out


def start_standins(
    sandbox: Sandbox, detached: bool = False, apt_mirror: bool = False, nvidia_dkms: bool = False
) -> Standins:
    """Build and start every stand-in; `detached` leaves them up for the demo; `apt_mirror`
    adds apt-cacher-ng as the Debian archive mirror (for air-gapped hosts); `nvidia_dkms`
    makes the NVIDIA repository's module packages DKMS sources (for VMs: own kernel).

    Ports are fixed per sandbox so re-runs of the demo keep the hosts' sources unchanged.
    """
    sandbox._ensure_network()  # the bridge address the servers bind to
    address = controller_address(sandbox)
    state = sandbox.state_dir
    nvidia_repo = NvidiaRepoStandin(state / "nvidia-repo", address, STANDIN_KEY_DIR)
    hub = HubProcess(state / "hub", address, 18300 + sandbox.net, {TINY_REPO: tiny_model_source()})
    wheels = WheelCache().ensure(load_lock(CPU_PROFILE, DEFAULT_LOCKS_DIR))
    pypi = PypiMirror(state / "pypi", address, wheels, port=19000 + sandbox.net)
    toolkit = ContainerToolkitRepoStandin(state / "toolkit-repo", address, STANDIN_KEY_DIR)
    image = build_image(IMAGE_CACHE)
    mirror = AptMirrorStandin(state / "apt-mirror", address, 18700 + sandbox.net)
    standins = Standins(nvidia_repo, hub, pypi, toolkit, image, state / "model-locks")
    stop_detached_standins(sandbox)  # of an earlier demo run
    if apt_mirror:
        standins.apt_mirror = mirror.start(detached=detached)
    nvidia_repo.build(dkms=nvidia_dkms)
    nvidia_repo.start(detached=detached)
    hub.start(detached=detached)
    pypi.start(detached=detached)
    toolkit.build()
    toolkit.start(detached=detached, port=18500 + sandbox.net)
    return standins


def stop_detached_standins(sandbox: Sandbox) -> None:
    """Stop the stand-ins a demo left running (they recorded pidfiles in the state dir)."""
    address = controller_address(sandbox)
    state = sandbox.state_dir
    NvidiaRepoStandin(state / "nvidia-repo", address, STANDIN_KEY_DIR).stop()
    HubProcess(state / "hub", address, 0, {}).stop()
    PypiMirror(state / "pypi", address, []).stop()
    ContainerToolkitRepoStandin(state / "toolkit-repo", address, STANDIN_KEY_DIR).stop()
    AptMirrorStandin(state / "apt-mirror", address, 0).stop()


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
    air_gapped = any(h.air_gapped for h in hosts)
    standins = start_standins(sandbox, detached=detached, apt_mirror=air_gapped)
    return World(sandbox, hosts, standins, host_data_for(hosts, standins))
