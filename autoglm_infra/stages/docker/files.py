"""Exact content of every file the Docker stage manages on a host. Pure.

daemon.json is merged, not owned: keys other stages or the admin set (proxies, data-root,
an nvidia runtime that `nvidia-ctk` configured) are kept, ours are enforced, and the
result is rendered canonically so an unchanged host compares equal.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from autoglm_infra.common.apt_source import deb822_source
from autoglm_infra.common.systemd_exec import exec_line
from autoglm_infra.stages.docker.args import DOCKER, ContainerSpec, run_argv

TEMPLATES = Path(__file__).resolve().parent / "templates"
DAEMON_JSON = "/etc/docker/daemon.json"
UNIT_NAME = "autoglm-docker.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
DOCKER_KEYRING = "/etc/apt/keyrings/autoglm-docker.gpg"
DOCKER_SOURCE = "/etc/apt/sources.list.d/autoglm-docker.sources"
TOOLKIT_KEYRING = "/etc/apt/keyrings/autoglm-nvidia-container-toolkit.gpg"
TOOLKIT_SOURCE = "/etc/apt/sources.list.d/autoglm-nvidia-container-toolkit.sources"
TOOLKIT_HELD_STATE = "/var/lib/autoglm/container-toolkit-held-packages"
BUILD_DIR = "/var/lib/autoglm/docker-build"  # the build context: Dockerfile and lock only
DOCKERFILE = f"{BUILD_DIR}/Dockerfile"
DERIVED_LOCK_NAME = "requirements.lock"
DERIVED_LOCK = f"{BUILD_DIR}/{DERIVED_LOCK_NAME}"
BUILD_LOG = "/var/lib/autoglm/docker-build.log"
IMAGE_DIR = "/var/lib/autoglm/images"

DISTRO_ENGINE = ("docker.io",)
# apparmor_parser: how dockerd loads docker-default. docker.io only Recommends it and we
# install without recommends; on a kernel that enforces AppArmor, Docker 20.10 (Debian
# 12's docker.io) then refuses to start any container, and 23+ runs them unconfined,
# saying so only in its own log (moby/moby#44902).
APPARMOR_PARSER = ("apparmor",)
DOCKER_REPO_ENGINE = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin")
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
# What `nvidia-ctk runtime configure --runtime=docker` writes.
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}
# The crash-loop limits and start timeout, shared with the venv-mode unit's intent:
# 5 failed starts within 30 minutes end in "failed" instead of restarting forever.
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL_S = 1800
RESTART_S = 10
STOP_TIMEOUT_S = 30
CODENAMES = {
    ("debian", "12"): "bookworm",
    ("debian", "13"): "trixie",
    ("ubuntu", "22.04"): "jammy",
    ("ubuntu", "24.04"): "noble",
}
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "amd64": "amd64", "arm64": "arm64"}


class DockerStageError(ValueError):
    """A user-facing refusal of the Docker stage (no traceback)."""


# --- repositories -----------------------------------------------------------------------


def engine_packages(source: str) -> tuple[str, ...]:
    return DISTRO_ENGINE if source == "distro" else DOCKER_REPO_ENGINE


def confinement_packages(kernel_apparmor: bool) -> tuple[str, ...]:
    """What dockerd needs to confine containers on this kernel (nothing without AppArmor)."""
    return APPARMOR_PARSER if kernel_apparmor else ()


def docker_repo_url(base_url: str, os_id: str) -> str:
    if os_id not in ("debian", "ubuntu"):
        raise DockerStageError(f"Docker's apt repository has no {os_id!r} flavour")
    return f"{base_url.rstrip('/')}/{os_id}"


def codename(os_id: str, os_version: str) -> str:
    try:
        return CODENAMES[(os_id, os_version)]
    except KeyError:
        raise DockerStageError(
            f"no Docker repository suite known for {os_id} {os_version}; supported: "
            + ", ".join(f"{d} {v}" for d, v in CODENAMES)
        ) from None


def deb_arch(arch: str) -> str:
    try:
        return DEB_ARCH[arch]
    except KeyError:
        raise DockerStageError(f"unsupported architecture {arch!r}") from None


def docker_key_url(repo_url: str) -> str:
    return f"{repo_url}/gpg"


def docker_source(repo_url: str, suite: str, arch: str) -> str:
    return deb822_source(
        "Docker engine repository", repo_url, DOCKER_KEYRING, suite, "stable", arch
    )


def toolkit_repo_url(base_url: str, arch: str) -> str:
    """NVIDIA's toolkit repo is flat, one per Debian architecture."""
    return f"{base_url.rstrip('/')}/stable/deb/{arch}"


def toolkit_key_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/gpgkey"


def toolkit_source(repo_url: str) -> str:
    return deb822_source("NVIDIA container toolkit repository", repo_url, TOOLKIT_KEYRING)


def toolkit_plan(version: str) -> list[tuple[str, str]]:
    return [(name, version) for name in TOOLKIT_PACKAGES]


# --- daemon.json ------------------------------------------------------------------------


def parse_daemon_json(text: str | None) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DockerStageError(
            f"{DAEMON_JSON} on the host is not valid JSON ({exc}); fix or remove it, nothing "
            "was changed"
        ) from None
    if not isinstance(doc, dict):
        raise DockerStageError(f"{DAEMON_JSON} on the host is not a JSON object")
    return doc


def daemon_config(
    current: Mapping[str, Any], registry_mirrors: Sequence[str] | None
) -> dict[str, Any]:
    """`current` with our settings enforced (CIS Docker section 2).

    registry_mirrors None leaves whatever is configured (another stage may own them);
    a list sets it, [] removes the key. The nvidia runtime is added only when no
    `nvidia` runtime is configured yet, so an existing entry (e.g. from nvidia-ctk with
    another path) is kept as it is.
    """
    doc: dict[str, Any] = dict(current)
    doc.update(
        {
            "icc": False,  # 2.2: no traffic between containers on the default bridge
            "live-restore": True,  # 2.15: containers keep running while dockerd restarts
            "log-driver": "local",  # rotated, compressed
            "log-opts": {"max-size": "50m", "max-file": "5"},
            "no-new-privileges": True,  # 2.14
            "userland-proxy": False,  # 2.16: iptables DNAT instead of docker-proxy
        }
    )
    if registry_mirrors is not None:
        if registry_mirrors:
            doc["registry-mirrors"] = list(registry_mirrors)
        else:
            doc.pop("registry-mirrors", None)
    runtimes = dict(doc.get("runtimes") or {})
    if "nvidia" not in runtimes:
        runtimes["nvidia"] = dict(NVIDIA_RUNTIME)
    doc["runtimes"] = runtimes
    return doc


def render_json(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


# --- systemd unit -----------------------------------------------------------------------


def health_gate_argv(name: str, timeout_s: int) -> list[str]:
    """Wait until Docker reports the container healthy; fail fast on unhealthy or gone.

    Gone: `docker run` (the unit's main process, $MAINPID for ExecStartPost) has exited,
    e.g. the daemon refused the container; systemd keeps waiting on the gate otherwise.
    """
    script = (
        f"end=$(( $(date +%s) + {timeout_s} )); "
        "while :; do "
        f"s=$({DOCKER} inspect -f '{{{{.State.Health.Status}}}}' {name} 2>/dev/null); "
        'case "$s" in healthy) exit 0;; unhealthy) echo "container unhealthy" >&2; exit 1;; '
        "esac; "
        '[ -z "$MAINPID" ] || kill -0 "$MAINPID" 2>/dev/null || '
        '{ echo "docker run exited before the container was healthy; its error: '
        f'journalctl -u {UNIT_NAME}" >&2; exit 1; }}; '
        '[ "$(date +%s)" -lt "$end" ] || '
        f'{{ echo "not healthy within {timeout_s} s (last health status: ${{s:-none}})" >&2; '
        "exit 1; }; "
        "sleep 2; done"
    )
    return ["/bin/sh", "-c", script]


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_container_unit(spec: ContainerSpec) -> str:
    start_timeout = spec.health_start_period + 300
    return (
        _templates()
        .get_template("autoglm-docker.service.j2")
        .render(
            name=spec.name,
            docker=DOCKER,
            exec_start=exec_line(run_argv(spec)),
            health_gate=exec_line(health_gate_argv(spec.name, start_timeout)),
            start_timeout=start_timeout + 60,
            start_limit_burst=START_LIMIT_BURST,
            start_limit_interval=START_LIMIT_INTERVAL_S,
            restart_sec=RESTART_S,
            stop_timeout=STOP_TIMEOUT_S,
        )
    )


# --- derived image ----------------------------------------------------------------------


def render_dockerfile(
    base_image: str, lock_name: str, import_check: Sequence[str], user: str, port: int
) -> str:
    return (
        _templates()
        .get_template("Dockerfile.j2")
        .render(
            base_image=base_image,
            lock_name=lock_name,
            lock_file=DERIVED_LOCK_NAME,
            import_check=list(import_check),
            run_user=user,
            port=port,
        )
    )


def derived_image_tag(dockerfile: str, lock_text: str) -> str:
    """Tag named after the build context (recipe and lock): a change is a new image."""
    digest = hashlib.sha256()
    for part in (dockerfile, lock_text):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return f"autoglm/engine:derived-{digest.hexdigest()[:16]}"


def build_command(tag: str, build_args: Sequence[str], lock_name: str, lock_source: str) -> str:
    """`docker build` of BUILD_DIR with its output in BUILD_LOG; on failure the log's tail
    and which lock to look at go to stderr (a hash mismatch is named as such)."""
    q_log = shlex.quote(BUILD_LOG)
    args = " ".join(shlex.quote(a) for a in build_args)
    where = f"docker_derived_lock={lock_name} ({lock_source}, on the host {DERIVED_LOCK})"
    mismatch = shlex.quote(
        f"derived image build failed: a downloaded file's sha256 is not in the lock {where}; "
        "the index serves different bytes or the lock is wrong. The running container was "
        "not touched."
    )
    failed = shlex.quote(
        f"derived image build failed for {where}; the running container was not touched. "
        f"Log: {BUILD_LOG}"
    )
    return (
        f"docker build {args} -t {shlex.quote(tag)} {shlex.quote(BUILD_DIR)} > {q_log} 2>&1 || "
        f"{{ tail -n 30 {q_log} >&2; "
        f"if grep -q 'DO NOT MATCH THE HASHES' {q_log}; then echo {mismatch} >&2; "
        f"else echo {failed} >&2; fi; exit 1; }}"
    )


# --- secrets ----------------------------------------------------------------------------


def env_file_content(api_key: str) -> bytes:
    if "\n" in api_key or not api_key:
        raise DockerStageError("the API key must be one non-empty line")
    return f"VLLM_API_KEY={api_key}\n".encode()


def generate_env_file_command(path: str) -> str:
    """Make a random key on the host once; the key is never in any argv (printf is builtin)."""
    return (
        f"umask 077; mkdir -p $(dirname {path}); [ -s {path} ] || "
        f"{{ k=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \\n'); "
        f"printf 'VLLM_API_KEY=%s\\n' \"$k\" > {path}.new && mv -f {path}.new {path}; }}"
    )
