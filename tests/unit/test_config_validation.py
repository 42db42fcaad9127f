"""The schema accepts the defaults and explains every bad value by key, value and fix."""

from __future__ import annotations

from typing import Any

import pytest

from autoglm_infra.config.schema import Settings, schema_fields
from autoglm_infra.config.validate import ConfigError, find_problems, validate_settings

REQUIRED_KEYS = {
    "serve_mode", "serve_host", "serve_port", "model_repo", "model_revision", "model_dir",
    "nvidia_driver_branch", "cuda_version", "cudnn_version", "proxy_url", "no_proxy",
    "pip_index_url", "npm_registry", "hub_endpoint",
}  # fmt: skip


def problems_for(**data: Any) -> dict[str, str]:
    return {p.key: p.describe() for p in find_problems(data)}


def test_issue_keys_exist_with_descriptions() -> None:
    rows = {key: description for key, _, _, description in schema_fields()}
    assert set(rows) >= REQUIRED_KEYS
    assert all(description.strip() for description in rows.values())


def test_defaults_are_valid() -> None:
    settings = validate_settings({})
    assert settings.serve_mode == "venv"
    assert settings.serve_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("serve_port", 70000, "less than or equal to 65535"),
        ("serve_port", 0, "greater than or equal to 1"),
        ("serve_mode", "podman", "'venv' or 'docker'"),
        ("model_revision", "", "must not be empty"),
        ("model_revision", "   ", "must not be empty"),
        ("model_dir", "models/autoglm", "absolute path"),
        ("model_dir", "/srv/../etc", "'..'"),
        ("model_repo", "AutoGLM-Phone-9B", "owner/name"),
        ("serve_host", "localhost", "not a host name"),
        ("nvidia_driver_branch", "57", "three-digit"),
        ("nvidia_driver_policy", "keep", "'adopt' or 'manage'"),
        ("cuda_version", "12", "MAJOR.MINOR"),
        ("cudnn_version", "8.9", "'9.MINOR'"),
        ("hub_endpoint", "huggingface.co", "scheme 'none'"),
        ("pip_index_url", "ftp://mirror/simple", "scheme 'ftp'"),
        ("npm_registry", "http://", "no host name"),
        ("proxy_url", "http://proxy:notaport", "not a valid URL"),
        ("nvidia_repo_key_fingerprint", "3BF863CC", "40-hex-digit"),
        ("no_proxy", ["ok.internal", "a b"], "without spaces"),
    ],
)
def test_bad_value_names_key_value_and_allowed(key: str, value: Any, expected: str) -> None:
    found = problems_for(**{key: value})
    assert set(found) == {key}
    assert expected in found[key]
    assert repr(value) in found[key]
    assert "allowed:" in found[key]


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        validate_settings(
            {"serve_port": 70000, "serve_mode": "podman", "model_revision": ""}, "gpu-01"
        )
    message = str(err.value)
    assert "gpu-01: 3 problems" in message
    for key in ("serve_port = 70000", "serve_mode = 'podman'", "model_revision = ''"):
        assert key in message
    assert "nothing was changed" in message


def test_credentials_in_proxy_url_refused_and_never_printed() -> None:
    found = problems_for(proxy_url="http://alice:s3cret@proxy.internal:3128")
    assert "must not embed user:password" in found["proxy_url"]
    assert "s3cret" not in found["proxy_url"]
    assert "alice" not in found["proxy_url"]


def test_misspelled_key_gets_a_suggestion() -> None:
    found = problems_for(model_revison="main")
    assert "did you mean 'model_revision'" in found["model_revison"]


def test_foreign_keys_are_ignored() -> None:
    assert problems_for(ssh_user="root", _sudo=True, docker_platform="linux/amd64") == {}


def test_fingerprint_normalised() -> None:
    fingerprint = "eb69 3b30 35cd 5710 e231 e123 a4b4 6996 3bf8 63cc"
    settings = validate_settings({"nvidia_repo_key_fingerprint": fingerprint})
    assert settings.nvidia_repo_key_fingerprint == "EB693B3035CD5710E231E123A4B469963BF863CC"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.serve_port = 1  # type: ignore[misc]
