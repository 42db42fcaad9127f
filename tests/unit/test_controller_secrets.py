"""Secrets come from the environment or a private file, and never show themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm_infra.common.secrets import SecretError, read_secret


def test_environment_wins_over_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    secret_file.chmod(0o600)
    secret = read_secret("TOKEN", str(secret_file), environ={"TOKEN": "from-env"})
    assert secret is not None and secret.reveal() == "from-env"


def test_file_value_without_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("abc\n")
    secret_file.chmod(0o600)
    secret = read_secret("TOKEN", str(secret_file), environ={})
    assert secret is not None and secret.reveal() == "abc"


def test_nothing_configured_is_none() -> None:
    assert read_secret("TOKEN", None, environ={}) is None


def test_secret_never_in_repr_or_str(tmp_path: Path) -> None:
    secret = read_secret("TOKEN", None, environ={"TOKEN": "hunter2"})
    assert secret is not None
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret} {secret!r}"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("abc")
    secret_file.chmod(mode)
    with pytest.raises(SecretError, match="chmod 600"):
        read_secret("TOKEN", str(secret_file), environ={})


def test_missing_and_empty_sources_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="does not exist"):
        read_secret("TOKEN", str(tmp_path / "absent"), environ={})
    with pytest.raises(SecretError, match="set but empty"):
        read_secret("TOKEN", None, environ={"TOKEN": " "})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(SecretError, match="is empty"):
        read_secret("TOKEN", str(empty), environ={})
