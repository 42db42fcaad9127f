"""Keys of the model service stage: systemd unit, restart policy, API key, health gate."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Self

from pydantic import AfterValidator, Field, model_validator

from autoglm_infra.config.fields import Keys, key

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_var_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError("must be an environment variable name such as AUTOGLM_API_KEY")
    return value


def controller_path(value: str) -> str:
    if not value.strip() or "\x00" in value:
        raise ValueError("must be a path on the controller (absolute or ~/...)")
    return value


def ip_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address or CIDR (host names are not allowed)"
        ) from None
    return value


class ServiceKeys(Keys):
    service_api_key_env: Annotated[str, AfterValidator(env_var_name)] = key(
        "AUTOGLM_API_KEY",
        "Controller environment variable holding the API key (read first).",
        "environment variable name",
    )
    service_api_key_file: Annotated[str, AfterValidator(controller_path)] | None = key(
        None,
        "Controller file (mode 600) holding the API key; with neither set, the host makes one.",
        "path on the controller or None",
    )
    service_restart_sec: Annotated[int, Field(ge=1, le=600)] = key(
        20, "Seconds between a crash and the restart (GPU memory must be freed).", "integer 1-600"
    )
    service_start_limit_burst: Annotated[int, Field(ge=1, le=100)] = key(
        5,
        "Starts allowed within service_start_limit_interval_sec before it stays failed.",
        "integer 1-100",
    )
    service_start_limit_interval_sec: Annotated[int, Field(ge=10)] = key(
        1800,
        "Window of the start limit; must exceed burst x (restart_sec + start time).",
        "integer >= 10",
    )
    service_start_timeout_sec: Annotated[int, Field(ge=30, le=7200)] = key(
        1500,
        "Deadline for /health to answer after a start (model load and compile take minutes).",
        "integer 30-7200",
    )
    service_allow_from: list[Annotated[str, AfterValidator(ip_network)]] = key(
        [],
        "Client addresses/CIDRs besides localhost allowed to reach the service (IPAddressAllow).",
        "list of IP addresses / CIDRs",
    )

    @model_validator(mode="after")
    def _start_limit_can_trigger(self) -> Self:
        if self.service_start_limit_interval_sec <= (
            self.service_start_limit_burst * self.service_restart_sec
        ):
            raise ValueError(
                "service_start_limit_interval_sec: must be longer than service_start_limit_burst"
                f" x service_restart_sec ({self.service_start_limit_burst} x "
                f"{self.service_restart_sec} s), otherwise a crash loop never ends in 'failed'"
            )
        return self
