"""Fingerprints we compute equal gpg's; a repository key is trusted only with its pinned one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from autoglm_infra.common.key_trust import KeyTrustError, trusted_keyring
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
