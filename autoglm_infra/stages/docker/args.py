"""The hardened `docker run` argv of the model server, built from settings. Pure.

Each flag and the CIS Docker Benchmark check it satisfies (IDs as docker-bench-security
v1.6.1+ / master numbers them; the older CIS 1.2-1.5 ID is one lower, see
shared/reference/hardening.md section 1):

| Flag | CIS check |
|---|---|
| no `--privileged` | 5.5 privileged containers |
| `--cap-drop=ALL`, no `--cap-add` | 5.4 restricted Linux capabilities |
| `--security-opt=no-new-privileges:true` | 5.26 no additional privileges |
| default seccomp (no `seccomp=unconfined`) | 5.22 default seccomp profile not disabled |
| `--read-only` (+ tmpfs /tmp, cache volume) | 5.13 read-only root filesystem |
| `--user UID:GID` (non-root) | 4.1 container user (runtime equivalent) |
| `--memory`, `--memory-swap` | 5.11 memory usage limited |
| `--cpus` | 5.12 CPU priority set |
| `--pids-limit` | 5.29 PIDs cgroup limit |
| `--shm-size`, never `--ipc=host` | 5.17 host IPC namespace not shared |
| no `--network=host`/`--pid=host`/`--uts=host`/`--userns=host` | 5.10, 5.16, 5.21, 5.31 |
| `-p 127.0.0.1:PORT:PORT` | 5.14 bind to a host interface; 5.8 no privileged port |
| model mounted `readonly`, no sensitive host dirs | 5.6 sensitive host directories |
| `--gpus device=...` (a DeviceRequest, not `--device`) | 5.18 host devices not exposed |
| `--health-cmd` + long `--health-start-period` | 5.27 health checked at runtime |
| image `name:tag@sha256:...` or image ID | 5.28 image pinned (manual) |
| `--rm` under systemd, no `--restart` | 5.15 restart policy (systemd owns restarts) |
| `--env-file` (0600 root), never `-e KEY=secret` | secrets off the command line (4.10-style) |
| or a read-only key file mount (`secret-mount`) | the key is not in `docker inspect` either |
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass

from autoglm_infra.config.schema import Settings

CONTAINER_NAME = "autoglm"
DOCKER = "/usr/bin/docker"
SPEC_LABEL = "io.autoglm.spec-hash"
ENV_FILE = "/etc/autoglm/docker-engine.env"
MODEL_MOUNT = "/models/autoglm"
CACHE_MOUNT = "/home/vllm/.cache"
SERVED_MODEL_NAME = "autoglm-phone-9b"
# secret-mount: the key file on the host (root:root 0440; the container runs with GID 0)
# and where the container sees it; a shell loads it and execs the entrypoint.
API_KEY_FILE = "/etc/autoglm/docker-api-key"
SECRET_MOUNT = "/run/secrets/autoglm-api-key"
KEY_LOADER = f'VLLM_API_KEY=$(cat {SECRET_MOUNT}) || exit 1; export VLLM_API_KEY; exec "$@"'
# Open-AutoGLM's recommended vLLM flags (README), minus `--allowed-local-media-path /`.
OPEN_AUTOGLM_FLAGS = (
    "--load-format", "safetensors",
    "--max-model-len", "25480",
    "--chat-template-content-format", "string",
    "--limit-mm-per-prompt", '{"image":10}',
    "--mm-encoder-tp-mode", "data",
    "--mm_processor_cache_type", "shm",
    "--mm_processor_kwargs", '{"max_pixels":5000000}',
)  # fmt: skip


@dataclass(frozen=True)
class ContainerSpec:
    """Everything that decides how the container runs; its hash labels the container."""

    image: str
    user: str
    memory: str
    memory_swap: str
    cpus: float
    pids_limit: int
    shm_size: str
    tmp_size: str
    tmp_exec: bool
    publish_host: str
    port: int
    gpu_devices: tuple[str, ...]
    cache_volume: str
    model_dir: str
    health_cmd: str
    health_start_period: int
    health_interval: int
    command: tuple[str, ...]
    name: str = CONTAINER_NAME
    env_file: str = ENV_FILE
    api_key_delivery: str = "env-file"  # or "secret-mount"
    entrypoint: tuple[str, ...] = ("vllm", "serve")  # only secret-mount names it


def default_health_cmd(port: int) -> str:
    """/health needs no API key; python3 is in every vLLM image (curl is not)."""
    url = f"http://127.0.0.1:{port}/health"
    return (
        'python3 -c "import sys,urllib.request;'
        f"sys.exit(0 if urllib.request.urlopen('{url}',timeout=4).status==200 else 1)\""
    )


def default_command(port: int) -> tuple[str, ...]:
    """vLLM image's entrypoint is `vllm serve`: the model path comes first."""
    return (
        MODEL_MOUNT,
        "--served-model-name", SERVED_MODEL_NAME,
        # 0.0.0.0 inside the container's own netns; the host side is bound by -p
        "--host", "0.0.0.0",
        "--port", str(port),
        *OPEN_AUTOGLM_FLAGS,
    )  # fmt: skip


def spec_from_settings(settings: Settings, image: str | None = None) -> ContainerSpec:
    """The container spec for `settings`; `image` overrides the run image (derived builds)."""
    run_image = image or settings.docker_image
    if run_image is None:
        raise ValueError("docker_image: required when serve_mode is docker")
    port = settings.serve_port
    return ContainerSpec(
        image=run_image,
        user=settings.docker_user,
        memory=settings.docker_memory,
        memory_swap=settings.docker_memory_swap or settings.docker_memory,
        cpus=settings.docker_cpus,
        pids_limit=settings.docker_pids_limit,
        shm_size=settings.docker_shm_size,
        tmp_size=settings.docker_tmp_size,
        tmp_exec=settings.docker_tmp_exec,
        publish_host=settings.serve_host,
        port=port,
        gpu_devices=tuple(settings.docker_gpu_devices),
        cache_volume=settings.docker_cache_volume,
        model_dir=settings.model_dir,
        health_cmd=settings.docker_health_cmd or default_health_cmd(port),
        health_start_period=settings.docker_health_start_period,
        health_interval=settings.docker_health_interval,
        command=tuple(settings.docker_command)
        if settings.docker_command is not None
        else default_command(port),
        api_key_delivery=settings.docker_api_key_delivery,
        entrypoint=tuple(settings.docker_entrypoint),
    )


def spec_hash(spec: ContainerSpec) -> str:
    """Short content hash of the spec: the container is recreated exactly when it changes."""
    blob = json.dumps(_flags(spec), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def publish_arg(host: str, port: int) -> str:
    shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    return f"--publish={shown}:{port}:{port}"


def gpus_arg(devices: Sequence[str]) -> list[str]:
    """`--gpus` stores a DeviceRequest (CIS 5.18 passes); the quotes keep 'device=0,1' whole."""
    if not devices:
        return []
    if list(devices) == ["all"]:
        return ["--gpus=all"]
    return [f'--gpus="device={",".join(devices)}"']


def api_key_path(delivery: str) -> str:
    """The host file that holds the API key (what verify and the doctor read)."""
    return API_KEY_FILE if delivery == "secret-mount" else ENV_FILE


def key_file_content(api_key: str) -> bytes:
    if "\n" in api_key or not api_key:
        raise ValueError("the API key must be one non-empty line")
    return f"{api_key}\n".encode()


def generate_key_file_command(path: str) -> str:
    """A random key, made on the host once, as root:root 0440 (group 0 = the container's GID).

    The key is never in any argv (printf is a shell builtin).
    """
    return (
        f"umask 077; mkdir -p $(dirname {path}); [ -s {path} ] || "
        f"{{ k=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \\n'); "
        f"printf '%s\\n' \"$k\" > {path}.new && chmod 440 {path}.new && mv -f {path}.new {path}; }}"
    )


def _api_key_flags(spec: ContainerSpec) -> list[str]:
    if spec.api_key_delivery == "secret-mount":
        return [f"--mount=type=bind,src={API_KEY_FILE},dst={SECRET_MOUNT},readonly"]
    return [f"--env-file={spec.env_file}"]


def _run_target(spec: ContainerSpec) -> list[str]:
    """Image and arguments; secret-mount wraps the entrypoint in the key loader."""
    if spec.api_key_delivery == "secret-mount":
        return ["--entrypoint=/bin/sh", spec.image, "-c", KEY_LOADER, "autoglm-serve",
                *spec.entrypoint, *spec.command]  # fmt: skip
    return [spec.image, *spec.command]


def _flags(spec: ContainerSpec) -> list[str]:
    tmp_opts = f"rw,nosuid,nodev,{'exec' if spec.tmp_exec else 'noexec'},size={spec.tmp_size}"
    cache = spec.cache_volume
    return [
        f"--name={spec.name}",
        f"--user={spec.user}",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges:true",
        f"--memory={spec.memory}",
        f"--memory-swap={spec.memory_swap}",
        f"--cpus={spec.cpus:g}",
        f"--pids-limit={spec.pids_limit}",
        f"--shm-size={spec.shm_size}",
        f"--tmpfs=/tmp:{tmp_opts}",
        f"--mount=type=volume,src={cache},dst={CACHE_MOUNT}",
        f"--mount=type=bind,src={spec.model_dir},dst={MODEL_MOUNT},readonly",
        publish_arg(spec.publish_host, spec.port),
        *gpus_arg(spec.gpu_devices),
        *_api_key_flags(spec),
        # caches into the writable volume; the model comes only from the mount
        "--env=HF_HUB_OFFLINE=1",
        "--env=VLLM_NO_USAGE_STATS=1",
        "--env=DO_NOT_TRACK=1",
        f"--env=HOME={CACHE_MOUNT.rsplit('/', 1)[0]}",
        f"--env=XDG_CACHE_HOME={CACHE_MOUNT}",
        f"--env=HF_HOME={CACHE_MOUNT}/huggingface",
        f"--env=VLLM_CACHE_ROOT={CACHE_MOUNT}/vllm",
        f"--env=TRITON_CACHE_DIR={CACHE_MOUNT}/triton",
        f"--health-cmd={spec.health_cmd}",
        f"--health-interval={spec.health_interval}s",
        "--health-timeout=5s",
        "--health-retries=3",
        f"--health-start-period={spec.health_start_period}s",
        *_run_target(spec),
    ]


def run_argv(spec: ContainerSpec) -> list[str]:
    """Full argv: `docker run --rm ...`; systemd owns restarts (--rm excludes --restart)."""
    flags = _flags(spec)
    label = f"--label={SPEC_LABEL}={spec_hash(spec)}"
    return [DOCKER, "run", "--rm", label, *flags]
