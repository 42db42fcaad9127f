"""Per-client API keys, made and kept on the controller (pure: no pyinfra import).

Each client in `serve_expose_clients` has `<serve_expose_secrets_dir>/clients/<name>.key`
(0600), the file to hand to that client. A key is made once and read back after that,
like `service_api_key_file`; deleting the file rotates the key at the next converge.
The host gets only the front's key map (root 0600, read by nginx's master process).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from autoglm_infra.common.secrets import Secret, SecretError, read_secret
from autoglm_infra.stages.expose.tls import TlsError, private_dir

# Characters an nginx quoted string holds literally ('$' would be a variable, '"' ends it).
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{24,256}$")


def client_key_path(secrets_dir: str, name: str, folder: str = "clients") -> Path:
    return Path(secrets_dir).expanduser() / folder / f"{name}.key"


def _new_key() -> str:
    return "agk-" + secrets.token_urlsafe(32)  # 256 bits from the OS CSPRNG


def client_keys(
    secrets_dir: str, names: list[str], folder: str = "clients", write: bool = True
) -> dict[str, Secret]:
    """name -> key for every client, making the missing key files (0600 from birth);
    `folder` "scrapers" holds the metrics listener's token. `write=False` (a --dry
    preview): a missing key is made in memory only."""
    if write:
        private_dir(Path(secrets_dir).expanduser() / folder)
    keys: dict[str, Secret] = {}
    for name in names:
        path = client_key_path(secrets_dir, name, folder)
        if not write and not path.exists():
            keys[name] = Secret(_new_key(), f"a key the converge makes in {path}")
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(_new_key() + "\n")
        try:
            secret = read_secret("", str(path), environ={})
        except SecretError as exc:
            raise TlsError("serve_expose_clients", f"client {name}: {exc}") from None
        assert secret is not None
        if not _KEY.match(secret.reveal()):
            raise TlsError(
                "serve_expose_clients",
                f"client {name}: the key in {path} must be 24-256 of A-Z a-z 0-9 . _ ~ + / = -; "
                "delete the file to have a new key made",
            )
        keys[name] = secret
    return keys


def _literal(key: str) -> str:
    """The key as a regex matching only itself: of the characters a key may hold (_KEY),
    only '.' and '+' mean something to PCRE; the rest stay as they are, so the map holds
    the key verbatim (what the secret-leak checks look for)."""
    return key.replace(".", "\\.").replace("+", "\\+")


def key_map(keys: dict[str, Secret]) -> bytes:
    """The nginx `map` body: the exact Authorization header of each client -> its name.

    A case-sensitive regex (`~`), anchored: nginx matches a map's plain strings ignoring
    case, which would let a key with its letters' case flipped in."""
    lines = ["# autoglm-infra expose stage: one line per client key (root 0600)"]
    lines += [f'"~^Bearer {_literal(keys[name].reveal())}$" {name};' for name in sorted(keys)]
    return ("\n".join(lines) + "\n").encode()


def metrics_auth(token: Secret) -> bytes:
    """The metrics listener's check of its scraper's token (an nginx include, 0640)."""
    return (
        f'if ($http_authorization != "Bearer {token.reveal()}") {{\n    return 401;\n}}\n'.encode()
    )
