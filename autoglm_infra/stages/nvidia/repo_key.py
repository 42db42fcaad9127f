"""Fetch a repository signing key on the controller and check it before any host sees it."""

from __future__ import annotations

import requests

from autoglm_infra.stages.nvidia.files import KeyTrustError, trusted_keyring

_cache: dict[tuple[str, str], bytes] = {}


def fetch_trusted_keyring(url: str, fingerprint: str, timeout: float = 30) -> bytes:
    """Binary keyring from `url` if its fingerprint matches; cached per run."""
    key = (url, fingerprint)
    if key not in _cache:
        try:
            response = requests.get(url, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise KeyTrustError(
                f"cannot fetch the repository key {url} for nvidia_repo_key_fingerprint="
                f"{fingerprint}: {exc}; nothing was trusted or written"
            ) from None
        _cache[key] = trusted_keyring(response.content, fingerprint, url)
    return _cache[key]
