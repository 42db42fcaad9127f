"""Fingerprints we compute equal gpg's; a repository key is trusted only with its pinned one,
also when it comes from the controller's key cache."""

from __future__ import annotations

import http.server
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm_infra.common import key_trust
from autoglm_infra.common.key_trust import (
    KEY_CACHE_MAX_AGE_S,
    KeyTrustError,
    fetch_trusted_keyring,
    key_cache_path,
    trusted_keyring,
)
from autoglm_infra.common.openpgp import KeyFormatError, dearmor, primary_fingerprints
from autoglm_infra.stages.nvidia.files import key_file_name

KEY = "nvidia_repo_key_fingerprint"


def gpg_key(home: Path, algo: str) -> tuple[bytes, str]:
    if not shutil.which("gpg"):
        pytest.fail("gpg is needed (apt-get install gnupg; `make deps` installs it)")
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        subprocess.run(
            ["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
             "test <t@example.invalid>", algo, "sign", "never"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        armored = subprocess.run(
            ["gpg", "--armor", "--export"], env=env, check=True, capture_output=True
        ).stdout
        colons = subprocess.run(
            ["gpg", "--with-colons", "--fingerprint"], env=env, check=True, capture_output=True,
            text=True,
        ).stdout  # fmt: skip
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr"))
    return armored, fpr


@pytest.mark.parametrize("algo", ["rsa3072", "ed25519"])
def test_fingerprint_matches_gpg(tmp_path: Path, algo: str) -> None:
    armored, fpr = gpg_key(tmp_path / "gnupg", algo)
    assert primary_fingerprints(armored) == [fpr]
    assert primary_fingerprints(dearmor(armored)) == [fpr]


def test_pinned_key_is_trusted_and_other_key_refused(tmp_path: Path) -> None:
    armored, fpr = gpg_key(tmp_path / "a", "ed25519")
    assert trusted_keyring(armored, fpr, KEY, "test.pub") == dearmor(armored)
    other = "0" * 40
    with pytest.raises(KeyTrustError) as err:
        trusted_keyring(armored, other, KEY, "http://mirror/3bf863cc.pub")
    assert fpr in str(err.value) and other in str(err.value)
    assert f"{KEY} pins" in str(err.value), "the message names the key to set"
    assert "nothing was trusted or written" in str(err.value)


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(KeyFormatError):
        primary_fingerprints(b"<html>404 not found</html>")
    with pytest.raises(KeyTrustError, match="not an OpenPGP public key"):
        trusted_keyring(b"<html>", "A" * 40, KEY, "x.pub")


def test_nvidia_key_file_name() -> None:
    assert key_file_name("EB693B3035CD5710E231E123A4B469963BF863CC") == "3bf863cc.pub"


# The controller's key cache: a key fetched once is reused for a day, and only while it
# still carries the pinned fingerprint (a real HTTP server on loopback).


class _KeyServer:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/repo.pub"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    return gpg_key(tmp_path_factory.mktemp("gpg") / "home", "ed25519")


@pytest.fixture
def served(
    key: tuple[bytes, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[_KeyServer]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("AUTOGLM_KEY_CACHE", raising=False)
    server = _KeyServer(key[0])
    yield server
    server.server.shutdown()
    server.server.server_close()


def _new_run() -> None:
    """What a new pyinfra process starts with: no key fetched in this process yet."""
    key_trust._fetched.clear()


def test_a_second_converge_takes_the_key_from_the_cache(
    served: _KeyServer, key: tuple[bytes, str]
) -> None:
    armored, fpr = key
    _new_run()
    assert fetch_trusted_keyring(served.url, fpr, KEY) == dearmor(armored)
    _new_run()
    assert fetch_trusted_keyring(served.url, fpr, KEY) == dearmor(armored)
    assert served.requests == 1
    cached = key_cache_path(served.url, fpr)
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700


def test_a_day_old_copy_is_fetched_again(served: _KeyServer, key: tuple[bytes, str]) -> None:
    _, fpr = key
    _new_run()
    fetch_trusted_keyring(served.url, fpr, KEY)
    cached = key_cache_path(served.url, fpr)
    old = time.time() - KEY_CACHE_MAX_AGE_S - 60
    os.utime(cached, (old, old))
    _new_run()
    fetch_trusted_keyring(served.url, fpr, KEY)
    assert served.requests == 2
    assert cached.stat().st_mtime > old  # refreshed


def test_a_cached_copy_that_is_not_the_pinned_key_is_not_used(
    served: _KeyServer, key: tuple[bytes, str]
) -> None:
    armored, fpr = key
    _new_run()
    fetch_trusted_keyring(served.url, fpr, KEY)
    key_cache_path(served.url, fpr).write_bytes(b"not a key")
    _new_run()
    assert fetch_trusted_keyring(served.url, fpr, KEY) == dearmor(armored)
    assert served.requests == 2


def test_another_pin_is_another_entry_and_still_refused(
    served: _KeyServer, key: tuple[bytes, str]
) -> None:
    _, fpr = key
    _new_run()
    fetch_trusted_keyring(served.url, fpr, KEY)
    _new_run()
    with pytest.raises(KeyTrustError, match=f"but {KEY} pins {'A' * 40}"):
        fetch_trusted_keyring(served.url, "A" * 40, KEY)
    assert served.requests == 2
    assert not key_cache_path(served.url, "A" * 40).exists()


def test_the_cache_can_be_turned_off(
    served: _KeyServer, key: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fpr = key
    monkeypatch.setenv("AUTOGLM_KEY_CACHE", "0")
    for _ in range(2):
        _new_run()
        fetch_trusted_keyring(served.url, fpr, KEY)
    assert served.requests == 2
    assert not key_cache_path(served.url, fpr).exists()
