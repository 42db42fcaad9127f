"""Which image the container runs and where it comes from: pull, tarball or derived build. Pure.

A `docker save` tarball names its image config in manifest.json; the image ID is the
sha256 of that config, which lists the sha256 of every layer, and `docker load` checks
the layers against it. Pinning the image ID therefore pins every byte of the image.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from autoglm_infra.common.hash_lock import (
    DEFAULT_LOCKS_DIR,
    HashLockError,
    Lock,
    available_profiles,
    parse_lock,
)

KEY_DERIVED_LOCK = "docker_derived_lock"
_LOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ImageError(ValueError):
    """The configured image cannot be used; the message names the key and the fix."""


class DerivedLockError(ImageError):
    """docker_derived_lock names no usable lock; `reason` is the message without the key."""

    def __init__(self, name: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{KEY_DERIVED_LOCK} = {name!r}: {reason}")


def _config_member(manifest: object) -> str:
    if not (isinstance(manifest, list) and len(manifest) == 1 and isinstance(manifest[0], dict)):
        raise ImageError("manifest.json must describe exactly one image")
    config = manifest[0].get("Config")
    if not isinstance(config, str):
        raise ImageError("manifest.json has no Config entry")
    return config


def tarball_image_id(path: str | Path) -> str:
    """'sha256:<hex>' of the single image in a `docker save` tarball, verified by hashing
    its config (so a tarball whose config does not match its name is refused)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            manifest_file = tar.extractfile("manifest.json")
            if manifest_file is None:
                raise ImageError("manifest.json is not a file")
            member = _config_member(json.load(manifest_file))
            config_file = tar.extractfile(member)
            if config_file is None:
                raise ImageError(f"{member} is not a file")
            digest = hashlib.sha256(config_file.read()).hexdigest()
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError) as exc:
        raise ImageError(
            f"docker_image_tarball = {str(path)!r}: not a readable `docker save` tarball ({exc})"
        ) from None
    named = member.rsplit("/", 1)[-1].removesuffix(".json")
    if named != digest:
        raise ImageError(
            f"docker_image_tarball = {str(path)!r}: config {member} hashes to {digest}"
        )
    return f"sha256:{digest}"


def check_tarball(path: str | Path, image_id: str) -> None:
    """Refuse a tarball that does not hold exactly `image_id` (before anything is uploaded)."""
    found = tarball_image_id(path)
    if found != image_id:
        raise ImageError(
            f"docker_image_tarball = {str(path)!r} holds image {found}, but docker_image pins "
            f"{image_id}: nothing was uploaded. Set docker_image to the ID of the image you "
            "mean to run."
        )


def pull_failure_hint(ref: str, mirrors: list[str], proxy_url: str | None) -> str:
    """What to check when `docker pull` fails: dockerd's own error names Docker Hub even
    when the configured mirrors were tried first, which sends users the wrong way."""
    first = ref.split("/")[0] if "/" in ref else ""
    registry = bool(first) and ("." in first or ":" in first or first == "localhost")
    hub_image = not registry or first in ("docker.io", "index.docker.io")
    route = []
    if mirrors and hub_image:
        route.append(f"docker_registry_mirrors {', '.join(mirrors)} (then Docker Hub)")
    if proxy_url:
        route.append(f"through proxy_url {proxy_url} (login from the network stage)")
    tried = "; dockerd went " + " and ".join(route) if route else ""
    return (
        f"docker pull {ref} failed{tried}: check that the host reaches the registry or a "
        "mirror that has this digest, the proxy keys, or set docker_image_tarball to load a "
        "`docker save` file on air-gapped hosts"
    )


@dataclass(frozen=True)
class DerivedLock:
    """The hash lock a derived image installs, exactly as it goes into the build context."""

    name: str
    path: Path
    text: str
    lock: Lock


def load_derived_lock(name: str, locks_dir: str | Path | None) -> DerivedLock:
    """<locks_dir>/<name>.txt, parsed as a complete hash lock; ImageError names the key,
    the value and the locks there are."""
    folder = Path(locks_dir) if locks_dir else DEFAULT_LOCKS_DIR
    path = folder / f"{name}.txt"
    if not _LOCK_NAME.match(name) or not path.is_file():
        known = ", ".join(available_profiles(folder)) or "none"
        raise DerivedLockError(
            name,
            f"no lock {path} (locks in {folder}: {known}); use one of them, or generate "
            "one with `python scripts/lock_requirements.py NAME`",
        )
    text = path.read_text()
    try:
        lock = parse_lock(text, name, str(path))
    except HashLockError as exc:
        raise DerivedLockError(name, str(exc)) from None
    return DerivedLock(name, path, text, lock)
