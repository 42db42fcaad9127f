"""Keys of the python env stage: service user, venv and hash-locked requirements.

The package index itself is `pip_index_url` (keys_network.py, proxy & mirrors stage).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from autoglm_infra.config.fields import AbsolutePath, HttpUrl, Keys, key

# pip options the stage sets itself, or that would defeat the hash lock.
FORBIDDEN_PIP_OPTIONS = (
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "--no-binary",
    "--only-binary",
    "--no-deps",
    "--require-hashes",
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
    "-U",
    "--upgrade",
    "--user",
    "-t",
    "--target",
    "--prefix",
    "--root",
)


def check_profile(value: str) -> str:
    if value != "auto" and not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", value):
        raise ValueError("must be 'auto' or a lock profile name such as 'cpu' or 'vllm-cu128'")
    return value


def check_user_name(value: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", value):
        raise ValueError("must be a POSIX user name (lower case, digits, _ or -, max 31)")
    if value == "root":
        raise ValueError("must not be root: the service runs unprivileged")
    return value


def check_pip_option(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError("pip options must be non-empty and contain no spaces (one per entry)")
    name = value.split("=", 1)[0]
    if name in FORBIDDEN_PIP_OPTIONS:
        raise ValueError(
            f"{name} is set by the stage or would bypass the hash lock; use pip_index_url / "
            "python_torch_index_url for indexes"
        )
    return value


class PythonEnvKeys(Keys):
    python_profile: Annotated[str, AfterValidator(check_profile)] = key(
        "auto",
        "Lock profile to install; 'auto' is <engine>-<torch flavour> from the stack "
        "resolver on GPU hosts and 'cpu' on GPU-less hosts.",
        "auto | cpu | <engine>-<flavour> with a lock in the python env stage's locks/ "
        "(e.g. vllm-cu128)",
    )
    python_interpreter: AbsolutePath = key(
        "/usr/bin/python3",
        "Interpreter the venv is created with (must satisfy the lock's Python range).",
        "absolute path",
    )
    python_venv_dir: AbsolutePath = key(
        "/opt/autoglm/venv",
        "Path of the serving venv (a symlink swapped atomically to <path>.builds/<digest>).",
        "absolute path",
    )
    python_service_user: Annotated[str, AfterValidator(check_user_name)] = key(
        "autoglm",
        "System user (no login shell) the model server runs as; it can read, not modify, the venv.",
        "POSIX user name, not root",
    )
    python_cache_dir: AbsolutePath = key(
        "/var/cache/autoglm",
        "Home of the service user; HF_HOME, TORCH_HOME, VLLM_CACHE_ROOT, TRITON_CACHE_DIR "
        "and XDG_CACHE_HOME live below it.",
        "absolute path",
    )
    python_torch_index_url: HttpUrl | None = key(
        "https://download.pytorch.org/whl",
        "Base of PyTorch's wheel index or a mirror with its layout (<base>/cpu, "
        "<base>/cu129); added for locks whose torch has a local label. None: torch comes "
        "from pip_index_url.",
        "http(s) URL or None",
    )
    python_pip_extra_args: list[Annotated[str, AfterValidator(check_pip_option)]] = key(
        [],
        "Extra options for the pip install (e.g. ['--timeout=60']); index, hash and "
        "binary-only options are set by the stage.",
        "list of pip options without spaces",
    )
    python_locks_dir: AbsolutePath | None = key(
        None,
        "Controller directory holding <profile>.txt locks; None uses the locks shipped with "
        "the package (autoglm_infra/locks).",
        "absolute path or None",
    )
