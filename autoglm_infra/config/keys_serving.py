"""Keys of the OpenAI-compatible endpoint: how and where it is served."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from autoglm_infra.config.fields import Keys, ip_address, key


class ServingKeys(Keys):
    serve_mode: Literal["venv", "docker"] = key(
        "venv", "Run the model server from a venv under systemd, or in Docker.", "venv | docker"
    )
    serve_host: Annotated[str, AfterValidator(ip_address)] = key(
        "127.0.0.1",
        "Address the OpenAI-compatible endpoint binds to; loopback unless a proxy fronts it.",
        "an IPv4/IPv6 address",
    )
    serve_port: Annotated[int, Field(ge=1, le=65535)] = key(
        8000, "TCP port of the OpenAI-compatible endpoint.", "integer 1-65535"
    )
