"""Keys of the Docker mode: engine, NVIDIA container toolkit, image and hardened run flags."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from autoglm_infra.config.fields import AbsolutePath, HttpUrl, Keys, Text, fingerprint, key
from autoglm_infra.stages.docker.image import DerivedLockError, load_derived_lock

# name[:tag]@sha256:<64 hex>: what `docker pull` verifies; a bare tag can move.
_PINNED_REF = re.compile(
    r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[0-9a-f]{64}$"
)
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
_SIZE = re.compile(r"^([1-9][0-9]*)([bkmg])$")
_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_GPU = re.compile(r"^(all|[0-9]{1,2}|GPU-[0-9a-fA-F-]{8,})$")
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")
_USER = re.compile(r"^([0-9]{1,10}):([0-9]{1,10})$")
_TOOLKIT_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(~rc\.[0-9]+)?-[0-9]+$")


def check_image(value: str) -> str:
    if not (_PINNED_REF.match(value) or _IMAGE_ID.match(value)):
        raise ValueError(
            "must be pinned by digest: 'name:tag@sha256:<64 hex>' (pulled), or an image ID "
            "'sha256:<64 hex>' loaded from docker_image_tarball; a bare tag can change under you"
        )
    return value


def size_bytes(value: str) -> int:
    """Bytes of a Docker size such as '16g' (b, k, m, g; powers of 1024)."""
    match = _SIZE.match(value.lower())
    if not match:
        raise ValueError(f"{value!r} is not a size like 512m or 16g")
    return int(match.group(1)) * _UNITS[match.group(2)]


def check_size(value: str) -> str:
    size_bytes(value)
    return value.lower()


def check_gpu(value: str) -> str:
    if not _GPU.match(value):
        raise ValueError("entries must be GPU indices ('0'), GPU UUIDs ('GPU-…') or 'all'")
    return value


def check_volume(value: str) -> str:
    if not _VOLUME.match(value):
        raise ValueError("must be a Docker volume name (letters, digits, _ . -), not a path")
    return value


def check_user(value: str) -> str:
    match = _USER.match(value)
    if not match:
        raise ValueError("must be numeric UID:GID such as 2000:0 (names differ between images)")
    if match.group(1) == "0":
        raise ValueError(
            "must not be UID 0: run an engine image that supports a non-root user "
            "(vLLM images ship UID 2000 with GID 0)"
        )
    return value


def check_toolkit_version(value: str) -> str:
    if not _TOOLKIT_VERSION.match(value):
        raise ValueError("must be a Debian version of the toolkit such as 1.17.8-1")
    return value


Size = Annotated[str, AfterValidator(check_size)]
Fingerprint = Annotated[str, AfterValidator(fingerprint)]


class DockerKeys(Keys):
    docker_engine_source: Literal["docker-repo", "distro"] = key(
        "docker-repo",
        "Docker engine from Docker's apt repository (docker-ce) or the distribution (docker.io).",
        "docker-repo | distro",
    )
    docker_repo_base_url: HttpUrl = key(
        "https://download.docker.com/linux",
        "Base URL of Docker's apt repositories (<base>/<debian|ubuntu>), or a mirror of it.",
        "http(s) URL",
    )
    docker_repo_key_fingerprint: Fingerprint = key(
        "9DC858229FC7DD38854AE2D88D81803C0EBFCD88",
        "Fingerprint Docker's repository key must have before it is trusted.",
        "40 hex digits",
    )
    docker_toolkit_repo_base_url: HttpUrl = key(
        "https://nvidia.github.io/libnvidia-container",
        "Base URL of NVIDIA's container toolkit repo (<base>/stable/deb/<arch>), or a mirror.",
        "http(s) URL",
    )
    docker_toolkit_key_fingerprint: Fingerprint = key(
        "C95B321B61E88C1809C4F759DDCAE044F796ECB0",
        "Fingerprint the container toolkit repository key must have before it is trusted.",
        "40 hex digits",
    )
    docker_toolkit_version: Annotated[str, Text, AfterValidator(check_toolkit_version)] = key(
        "1.17.8-1",
        "nvidia-container-toolkit version installed and held (with its three libraries).",
        "Debian version, e.g. 1.17.8-1",
    )
    docker_image: Annotated[str, AfterValidator(check_image)] | None = key(
        None,
        "Engine image pinned by digest; required in docker mode. An image ID needs a tarball.",
        "name:tag@sha256:<64 hex> | sha256:<64 hex> (image ID) | None",
    )
    docker_image_tarball: AbsolutePath | None = key(
        None,
        "`docker save` tarball on the controller, loaded on air-gapped hosts instead of a pull.",
        "absolute path on the controller, or None",
    )
    docker_derived_lock: Annotated[str, Text] | None = key(
        None,
        "Hash lock installed into a derived image built on the host from docker_image "
        "(pip --require-hashes --no-deps); None runs docker_image as it is.",
        "name of a lock in docker_locks_dir (e.g. docker-vllm-0.12.0), or None",
    )
    docker_locks_dir: AbsolutePath | None = key(
        None,
        "Controller directory holding <name>.txt locks for docker_derived_lock; None uses "
        "the project's autoglm_infra/locks.",
        "absolute path or None",
    )
    docker_user: Annotated[str, AfterValidator(check_user)] = key(
        "2000:0", "UID:GID the engine runs as in the container (never 0).", "UID:GID, UID not 0"
    )
    docker_memory: Size = key("64g", "Container memory limit (--memory).", "size such as 64g")
    docker_memory_swap: Size | None = key(
        None,
        "Memory plus swap limit (--memory-swap); None means equal to docker_memory (no swap).",
        "size >= docker_memory, or None",
    )
    docker_cpus: Annotated[float, Field(gt=0, le=1024)] = key(
        8.0, "CPUs the container may use (--cpus).", "number > 0"
    )
    docker_pids_limit: Annotated[int, Field(ge=64, le=4194304)] = key(
        4096, "Most processes/threads in the container (--pids-limit).", "integer 64-4194304"
    )
    docker_shm_size: Size = key(
        "16g",
        "Size of /dev/shm (--shm-size); above the 4 GiB multimodal shm cache. Never --ipc=host.",
        "size such as 16g",
    )
    docker_tmp_size: Size = key("4g", "Size of the tmpfs at /tmp.", "size such as 4g")
    docker_tmp_exec: bool = key(
        True,
        "Mount /tmp exec: Triton/Inductor dlopen() the kernels they build there.",
        "true | false",
    )
    docker_gpu_devices: list[Annotated[str, AfterValidator(check_gpu)]] = key(
        ["0"],
        "GPUs the container sees (--gpus device=...); [] for none, ['all'] for every GPU.",
        "list of GPU indices / UUIDs, or ['all'], or []",
    )
    docker_cache_volume: Annotated[str, AfterValidator(check_volume)] = key(
        "autoglm-cache",
        "Named volume for the engine's caches (HF, vLLM compile, Triton), writable by docker_user.",
        "Docker volume name",
    )
    docker_command: list[str] | None = key(
        None,
        "Arguments after the image; None serves the mounted model with Open-AutoGLM's vLLM flags.",
        "list of strings, or None",
    )
    docker_health_cmd: str | None = key(
        None,
        "Health check run inside the container; None probes /health with python3.",
        "shell command, or None",
    )
    docker_health_start_period: Annotated[int, Field(ge=0, le=7200)] = key(
        900,
        "Seconds of start-up (model load, compile) before failed health checks count.",
        "integer 0-7200",
    )

    docker_health_interval: Annotated[int, Field(ge=1, le=3600)] = key(
        30, "Seconds between health checks (the first one runs after this too).", "integer 1-3600"
    )
    docker_api_key_delivery: Literal["env-file", "secret-mount"] = key(
        "env-file",
        "How the API key reaches the engine: a 0600 --env-file (the key shows in `docker "
        "inspect` Config.Env), or a read-only file mount read at start (it does not).",
        "env-file | secret-mount",
    )
    docker_entrypoint: list[str] = key(
        ["vllm", "serve"],
        "The image's entrypoint; secret-mount runs it after loading the key ([] for none).",
        "list of strings",
    )

    @model_validator(mode="after")
    def _docker_cross_checks(self) -> Self:
        if self.docker_memory_swap is not None and size_bytes(self.docker_memory_swap) < size_bytes(
            self.docker_memory
        ):
            raise ValueError(
                f"docker_memory_swap: {self.docker_memory_swap} is below docker_memory "
                f"{self.docker_memory}; set it >= docker_memory or None (no swap)"
            )
        if "all" in self.docker_gpu_devices and len(self.docker_gpu_devices) > 1:
            raise ValueError("docker_gpu_devices: 'all' cannot be combined with other devices")
        if self.docker_api_key_delivery == "secret-mount" and not self.docker_user.endswith(":0"):
            raise ValueError(
                f"docker_api_key_delivery: secret-mount needs docker_user with GID 0 (the key "
                f"file is root:root 0440, readable through group 0), not {self.docker_user}; "
                "use e.g. 2000:0 or docker_api_key_delivery: env-file"
            )
        if self.docker_derived_lock is not None:
            try:
                load_derived_lock(self.docker_derived_lock, self.docker_locks_dir)
            except DerivedLockError as exc:
                raise ValueError(f"docker_derived_lock: {exc.reason}") from None
        if getattr(self, "serve_mode", "docker") != "docker":
            return self
        if getattr(self, "serve_engine", "vllm") == "sglang":
            # the container gets vLLM's entrypoint, flags and key variable (VLLM_API_KEY)
            raise ValueError(
                "serve_engine: sglang runs in venv mode only (docker mode starts the vLLM "
                "image's `vllm serve` with VLLM_API_KEY, which SGLang does not read); use "
                "serve_mode: venv, or serve_engine: vllm in docker mode"
            )
        image = self.docker_image
        if image is None:
            raise ValueError(
                "docker_image: required when serve_mode is docker; pin the engine image by "
                "digest, e.g. vllm/vllm-openai:v0.12.0@sha256:<64 hex> "
                "(`docker buildx imagetools inspect` shows it)"
            )
        if _IMAGE_ID.match(image) and self.docker_image_tarball is None:
            raise ValueError(
                "docker_image: an image ID cannot be pulled; set docker_image_tarball to the "
                "`docker save` tarball that holds it, or use name:tag@sha256:<digest>"
            )
        if self.docker_image_tarball is not None and not _IMAGE_ID.match(image):
            raise ValueError(
                "docker_image: a tarball is loaded, not pulled, so pin its image ID "
                "'sha256:<64 hex>' (docker image inspect -f '{{.Id}}' NAME), not a registry ref"
            )
        return self
