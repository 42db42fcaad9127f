"""Secrets read on the controller: from an environment variable or a local file, never data.

Proxy passwords, hub tokens and API keys never live in group_data (which is committed and
printed). A secret is named by an environment variable and, optionally, a file on the
controller. Values are wrapped in `Secret` so that a stray print or log shows '***'.
Pure: no pyinfra import.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SecretError(ValueError):
    """A secret source exists but cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class Secret:
    """A secret value that does not show itself in repr/str (pyinfra output, tracebacks)."""

    value: str = field(repr=False)
    source: str  # where it came from, for messages: "env AUTOGLM_HUB_TOKEN" or a path

    def __str__(self) -> str:
        return f"*** (from {self.source})"

    def reveal(self) -> str:
        return self.value


def read_secret(
    env_var: str, file_path: str | None = None, environ: Mapping[str, str] | None = None
) -> Secret | None:
    """The secret from `env_var` if set, else from `file_path` if given; None when neither.

    The file must be a regular file not readable by group or others (like ssh keys), and
    its value is its content without the trailing newline. An empty value is an error:
    a half-configured secret should stop the run, not silently send no credentials.
    """
    env = os.environ if environ is None else environ
    raw = env.get(env_var)
    if raw is not None:
        if not raw.strip():
            raise SecretError(
                f"environment variable {env_var} is set but empty; unset it or fill it"
            )
        return Secret(raw.strip(), f"env {env_var}")
    if not file_path:
        return None
    path = Path(file_path).expanduser()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SecretError(
            f"secret file {path} does not exist; create it (chmod 600) or unset the key"
        ) from None
    except OSError as exc:
        raise SecretError(f"secret file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"secret file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise SecretError(
            f"secret file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):03o}); "
            f"run: chmod 600 {path}"
        )
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"secret file {path} cannot be read: {exc}") from None
    if not value:
        raise SecretError(f"secret file {path} is empty; put the secret in it or unset the key")
    return Secret(value, str(path))
