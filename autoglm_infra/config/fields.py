"""Field types and validators shared by the per-stage key groups (pure: no pyinfra import)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from autoglm_infra.config.urls import check_url


def non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path (start with /)")
    if "\x00" in value or "/../" in f"{value}/":
        raise ValueError("must not contain '..' or NUL bytes")
    return value.rstrip("/") or "/"


def ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address, not a host name") from None
    return value


def fingerprint(value: str) -> str:
    compact = value.replace(" ", "").upper()
    if not re.fullmatch(r"[0-9A-F]{40}", compact):
        raise ValueError("must be a full 40-hex-digit OpenPGP fingerprint (not a short key id)")
    return compact


def _as_text(value: object) -> object:
    """`--data nvidia_driver_branch=570` arrives as an int, `cuda_version=12.8` as a float."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Text = BeforeValidator(_as_text)


def _url(*schemes: str, credentials: bool = False) -> AfterValidator:
    return AfterValidator(lambda v: check_url(v, schemes, allow_credentials=credentials))


HttpUrl = Annotated[str, _url("http", "https")]
ProxyUrl = Annotated[str, _url("http", "https")]
NonEmpty = Annotated[str, AfterValidator(non_empty)]
AbsolutePath = Annotated[str, AfterValidator(absolute_path)]


def key(default: Any, description: str, allowed: str) -> Any:
    """A schema field: `allowed` is what the error message and README show as valid values."""
    return Field(default=default, description=description, json_schema_extra={"allowed": allowed})


class Keys(BaseModel):
    """Base of every key group: unknown keys are ignored here (validate.py reports them)."""

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True, defer_build=True)
