"""Repository signing keys: fetched on the controller, trusted only with the pinned fingerprint.

One helper for every repository the deploy adds (NVIDIA's CUDA repository, Docker's,
the NVIDIA container toolkit's): no host sees a key before its fingerprint matched.
"""

from __future__ import annotations

import requests

from autoglm_infra.common.openpgp import KeyFormatError, dearmor, primary_fingerprints


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


def fetch_trusted_keyring(url: str, fingerprint: str, key_name: str, timeout: float = 30) -> bytes:
    """Keyring from `url` (fetched on the controller) if its fingerprint matches; cached."""
    cache_key = (url, fingerprint)
    if cache_key not in _fetched:
        try:
            response = requests.get(url, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise KeyTrustError(
                f"cannot fetch the repository key {url} for {key_name}={fingerprint}: {exc}; "
                "nothing was trusted or written"
            ) from None
        _fetched[cache_key] = trusted_keyring(response.content, fingerprint, key_name, url)
    return _fetched[cache_key]
