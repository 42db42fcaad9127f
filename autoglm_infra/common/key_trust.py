"""Repository signing keys: fetched on the controller, trusted only with the pinned fingerprint.

One helper for every repository the deploy adds (NVIDIA's CUDA repository, Docker's,
the NVIDIA container toolkit's): no host sees a key before its fingerprint matched.

A fetched key is kept on the controller for a day (~/.cache/autoglm-infra/repo-keys, keyed
by URL and pinned fingerprint) so that a no-op converge makes no request; the cached
copy passes the same fingerprint check on every use. A rotated key has a new fingerprint,
hence a new entry; an expiry extension under the same fingerprint reaches hosts within
KEY_CACHE_MAX_AGE_S. AUTOGLM_KEY_CACHE=0 fetches every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from autoglm_infra.common.controller_cache import cache_dir, prune_unused, write_private
from autoglm_infra.common.openpgp import KeyFormatError, dearmor, primary_fingerprints

KEY_CACHE_MAX_AGE_S = 24 * 3600


class KeyTrustError(ValueError):
    """The repository key is not the one the configuration pins, or cannot be fetched."""


_fetched: dict[tuple[str, str], bytes] = {}


def trusted_keyring(data: bytes, fingerprint: str, key_name: str, source: str) -> bytes:
    """The binary keyring to install, only if its sole primary key has `fingerprint`."""
    try:
        found = primary_fingerprints(data)
    except KeyFormatError as exc:
        raise KeyTrustError(f"{source} is not an OpenPGP public key ({exc})") from None
    if found != [fingerprint]:
        raise KeyTrustError(
            f"{source} has key fingerprint {', '.join(found) or 'none'}, but {key_name} pins "
            f"{fingerprint}: nothing was trusted or written. If a mirror re-signed the "
            f"repository, set {key_name} to its fingerprint after checking it out of band."
        )
    return dearmor(data)


def key_cache_path(url: str, fingerprint: str) -> Path:
    return cache_dir("repo-keys") / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}-{fingerprint}"


def _cache_on() -> bool:
    return os.environ.get("AUTOGLM_KEY_CACHE", "1") != "0"


def _cached_key(url: str, fingerprint: str, key_name: str) -> bytes | None:
    """The keyring from the controller's cache: fresh and still the pinned key, else None."""
    if not _cache_on():
        return None
    path = key_cache_path(url, fingerprint)
    try:
        if time.time() - path.stat().st_mtime > KEY_CACHE_MAX_AGE_S:
            return None
        return trusted_keyring(path.read_bytes(), fingerprint, key_name, str(path))
    except (OSError, KeyTrustError):
        return None  # a miss: fetched again


def fetch_trusted_keyring(url: str, fingerprint: str, key_name: str, timeout: float = 30) -> bytes:
    """Keyring from `url` (fetched on the controller) if its fingerprint matches; cached."""
    cache_key = (url, fingerprint)
    if cache_key in _fetched:
        return _fetched[cache_key]
    cached = _cached_key(url, fingerprint, key_name)
    if cached is not None:
        _fetched[cache_key] = cached
        return cached
    import requests  # here, not at the top: a converge with the key cached never needs it

    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise KeyTrustError(
            f"cannot fetch the repository key {url} for {key_name}={fingerprint}: {exc}; "
            "nothing was trusted or written"
        ) from None
    _fetched[cache_key] = trusted_keyring(response.content, fingerprint, key_name, url)
    if _cache_on():
        with contextlib.suppress(OSError):  # a cache: the next converge fetches again
            path = key_cache_path(url, fingerprint)
            write_private(path, response.content)
            prune_unused(path.parent, 30 * KEY_CACHE_MAX_AGE_S)  # keys of repositories left
    return _fetched[cache_key]
