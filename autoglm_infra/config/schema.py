"""Every group_data key this project reads: type, default and a one-line description.

This is the single source of truth: validation, the README variable table and the
documented ``group_data/all.py`` are all generated from it. Pure: no pyinfra import.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from autoglm_infra.config.urls import check_url


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path (start with /)")
    if "\x00" in value or "/../" in f"{value}/":
        raise ValueError("must not contain '..' or NUL bytes")
    return value.rstrip("/") or "/"


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address, not a host name") from None
    return value


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _repo_id(value: str) -> str:
    if not _REPO_ID.match(value):
        raise ValueError("must look like 'owner/name', e.g. 'zai-org/AutoGLM-Phone-9B'")
    return value


def _as_text(value: object) -> object:
    """`--data nvidia_driver_branch=570` arrives as an int, `cuda_version=12.8` as a float."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Text = BeforeValidator(_as_text)


def _driver_branch(value: str) -> str:
    if value != "auto" and not re.fullmatch(r"[1-9][0-9]{2}", value):
        raise ValueError("must be 'auto' or a three-digit branch such as '570' or '580'")
    return value


def _cuda_version(value: str) -> str:
    if value != "auto" and not re.fullmatch(r"1[1-9]\.[0-9]", value):
        raise ValueError("must be 'auto' or MAJOR.MINOR such as '12.8'")
    return value


def _cudnn_version(value: str) -> str:
    if value not in ("auto", "none") and not re.fullmatch(r"9(\.[0-9]{1,2})?", value):
        raise ValueError("must be 'auto', 'none', '9' or '9.MINOR' such as '9.10'")
    return value


def _fingerprint(value: str) -> str:
    compact = value.replace(" ", "").upper()
    if not re.fullmatch(r"[0-9A-F]{40}", compact):
        raise ValueError("must be a full 40-hex-digit OpenPGP fingerprint (not a short key id)")
    return compact


def _no_proxy_entry(value: str) -> str:
    if not value or any(c.isspace() for c in value) or "," in value:
        raise ValueError("entries must be non-empty host names, domains or CIDRs without spaces")
    return value


def _url(*schemes: str, credentials: bool = False) -> AfterValidator:
    return AfterValidator(lambda v: check_url(v, schemes, allow_credentials=credentials))


HttpUrl = Annotated[str, _url("http", "https")]
ProxyUrl = Annotated[str, _url("http", "https")]
NonEmpty = Annotated[str, AfterValidator(_non_empty)]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]


def _key(default: Any, description: str, allowed: str) -> Any:
    """A schema field: `allowed` is what the error message and README show as valid values."""
    return Field(default=default, description=description, json_schema_extra={"allowed": allowed})


class Settings(BaseModel):
    """Validated configuration of one host (merged pyinfra host + group data)."""

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)

    # --- serving ---------------------------------------------------------------------------
    serve_mode: Literal["venv", "docker"] = _key(
        "venv", "Run the model server from a venv under systemd, or in Docker.", "venv | docker"
    )
    serve_host: Annotated[str, AfterValidator(_ip_address)] = _key(
        "127.0.0.1",
        "Address the OpenAI-compatible endpoint binds to; loopback unless a proxy fronts it.",
        "an IPv4/IPv6 address",
    )
    serve_port: Annotated[int, Field(ge=1, le=65535)] = _key(
        8000, "TCP port of the OpenAI-compatible endpoint.", "integer 1-65535"
    )

    # --- model -----------------------------------------------------------------------------
    model_repo: Annotated[str, AfterValidator(_repo_id)] = _key(
        "zai-org/AutoGLM-Phone-9B",
        "Hub repository of the model (or its -Multilingual twin).",
        "owner/name",
    )
    model_revision: Annotated[str, Text, AfterValidator(_non_empty)] = _key(
        "main",
        "Branch, tag or commit of model_repo; locked to a commit before download.",
        "non-empty branch, tag or 40-hex commit",
    )
    model_dir: AbsolutePath = _key(
        "/srv/autoglm/models/AutoGLM-Phone-9B",
        "Directory on the host that holds the verified model files.",
        "absolute path",
    )
    hub_endpoint: HttpUrl = _key(
        "https://huggingface.co",
        "Hugging Face or an HF-compatible mirror (e.g. hf-mirror) used to resolve and pull.",
        "http(s) URL",
    )

    # --- NVIDIA stack ----------------------------------------------------------------------
    nvidia_driver_branch: Annotated[str, Text, AfterValidator(_driver_branch)] = _key(
        "auto",
        "NVIDIA driver branch; 'auto' picks the newest production branch that fits.",
        "auto | three-digit branch (e.g. 570)",
    )
    nvidia_driver_flavour: Literal["auto", "open", "proprietary"] = _key(
        "auto",
        "Kernel modules: open (Turing and newer) or proprietary; auto picks open when possible.",
        "auto | open | proprietary",
    )
    cuda_version: Annotated[str, Text, AfterValidator(_cuda_version)] = _key(
        "auto",
        "CUDA toolkit version; 'auto' follows the serving engine's torch wheel.",
        "auto | MAJOR.MINOR (e.g. 12.8)",
    )
    cudnn_version: Annotated[str, Text, AfterValidator(_cudnn_version)] = _key(
        "auto",
        "cuDNN 9 release to install from NVIDIA's repo; 'none' skips it.",
        "auto | none | 9 | 9.MINOR",
    )
    nvidia_require_gpu: bool = _key(
        True,
        "Refuse hosts without an NVIDIA GPU; false installs the stack and skips GPU checks.",
        "true | false",
    )
    nvidia_reboot: Literal["never", "if-needed"] = _key(
        "if-needed",
        "Reboot when the installed driver differs from the loaded one; never only warns.",
        "never | if-needed",
    )
    nvidia_repo_base_url: HttpUrl = _key(
        "https://developer.download.nvidia.com/compute/cuda/repos",
        "Base URL of NVIDIA's CUDA apt repositories, or a mirror with the same layout.",
        "http(s) URL",
    )
    nvidia_repo_key_fingerprint: Annotated[str, AfterValidator(_fingerprint)] = _key(
        "EB693B3035CD5710E231E123A4B469963BF863CC",
        "Fingerprint the repository signing key must have before it is trusted.",
        "40 hex digits",
    )

    # --- proxies and mirrors ---------------------------------------------------------------
    proxy_url: ProxyUrl | None = _key(
        None,
        "HTTP(S) proxy for apt, pip, npm, Docker and the shell; credentials never go here.",
        "http(s) URL without user:pass, or None",
    )
    no_proxy: list[Annotated[str, AfterValidator(_no_proxy_entry)]] = _key(
        ["localhost", "127.0.0.1", "::1"],
        "Hosts, domains and CIDRs that bypass proxy_url.",
        "list of host names / domains / CIDRs",
    )
    pip_index_url: HttpUrl | None = _key(
        None,
        "PyPI mirror used for the venv; None uses pip's default index.",
        "http(s) URL or None",
    )
    npm_registry: HttpUrl | None = _key(
        None, "npm registry mirror; None uses npm's default registry.", "http(s) URL or None"
    )


def schema_fields() -> list[tuple[str, Any, str, str]]:
    """(key, default, allowed, description) for every key, in schema order."""
    rows = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        allowed = str(extra["allowed"]) if isinstance(extra, dict) else ""
        rows.append((name, field.default, allowed, field.description or ""))
    return rows
