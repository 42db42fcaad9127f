"""One remote command reports files, packages and commands; the parser reads it back."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from autoglm_infra.common.snapshot import FileState, PackageState, parse_snapshot, snapshot_script


def run(script: str) -> list[str]:
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_snapshot_of_this_machine(tmp_path: Path) -> None:
    present = tmp_path / "a b.conf"  # a space in the name must survive
    present.write_text("hello\nworld\n")
    os.chmod(present, 0o640)
    missing = tmp_path / "missing"
    script = snapshot_script(
        [str(present), str(missing)], ["dpkg", "libc6", "no-such-package-xyz"],
        read_text=[str(present)], commands=["sh", "no-such-binary-xyz"],
    )  # fmt: skip
    snap = parse_snapshot(run(script))
    state = snap.files[str(present)]
    assert state == FileState(
        hashlib.sha256(b"hello\nworld\n").hexdigest(), "640", "root", "root", "hello\nworld\n"
    )
    assert snap.files[str(missing)] is None
    assert snap.packages["dpkg"].version
    assert not snap.packages["dpkg"].held
    assert "no-such-package-xyz" not in snap.packages
    assert snap.commands == {"sh": True, "no-such-binary-xyz": False}


def test_odd_names_and_many_files_in_one_read(tmp_path: Path) -> None:
    """One stat and one sha256sum for all files: names GNU escapes (a backslash) and
    names with runs of spaces come back as they are, each with its own digest and mode."""
    names = ["back\\slash", "two  spaces", "plain", *(f"f{i}" for i in range(20))]
    for i, name in enumerate(names):
        (tmp_path / name).write_text(f"content {i}\n")
        os.chmod(tmp_path / name, 0o600 + i % 8)
    paths = [str(tmp_path / n) for n in names] + [str(tmp_path / "gone")]
    snap = parse_snapshot(run(snapshot_script(paths, [])))
    for i, name in enumerate(names):
        digest = hashlib.sha256(f"content {i}\n".encode()).hexdigest()
        assert snap.files[str(tmp_path / name)] == FileState(
            digest, f"{600 + i % 8}", "root", "root"
        ), name
    assert snap.files[str(tmp_path / "gone")] is None
    assert len(snap.files) == len(paths)


def test_held_and_config_only_packages() -> None:
    snap = parse_snapshot(
        [
            "P hi  cuda-drivers-570 570.172.08-1",
            "P ii  libcudnn9-cuda-12 9.10.2.21-1",
            "P rc  nvidia-driver-550-open 550.163.01-1",
        ]
    )
    assert snap.packages == {
        "cuda-drivers-570": PackageState("570.172.08-1", True),
        "libcudnn9-cuda-12": PackageState("9.10.2.21-1", False),
    }
