"""Every group_data key this project reads: type, default and a one-line description.

This is the single source of truth: validation, the README variable table and the
documented ``group_data/all.py`` are all generated from it. Each stage owns its keys in
``keys_<stage>.py``; `Settings` joins them. Pure: no pyinfra import.
"""

from __future__ import annotations

from typing import Any

from autoglm_infra.config.keys_docker import DockerKeys
from autoglm_infra.config.keys_expose import ExposeKeys
from autoglm_infra.config.keys_model import ModelKeys
from autoglm_infra.config.keys_network import NetworkKeys
from autoglm_infra.config.keys_nvidia import NvidiaKeys
from autoglm_infra.config.keys_preflight import PreflightKeys
from autoglm_infra.config.keys_python import PythonEnvKeys
from autoglm_infra.config.keys_service import ServiceKeys
from autoglm_infra.config.keys_serving import ServingKeys
from autoglm_infra.config.keys_verify import VerifyKeys


# pydantic orders fields from the last base to the first, so this list is the reverse of
# the README order (serving, expose, preflight, network, nvidia, python, model, service,
# docker, verify).
class Settings(
    VerifyKeys,
    DockerKeys,
    ServiceKeys,
    ModelKeys,
    PythonEnvKeys,
    NvidiaKeys,
    NetworkKeys,
    PreflightKeys,
    ExposeKeys,
    ServingKeys,
):
    """Validated configuration of one host (merged pyinfra host + group data)."""


def schema_fields() -> list[tuple[str, Any, str, str]]:
    """(key, default, allowed, description) for every key, in schema order."""
    rows = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        allowed = str(extra["allowed"]) if isinstance(extra, dict) else ""
        rows.append((name, field.default, allowed, field.description or ""))
    return rows
