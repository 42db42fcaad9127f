"""The Vagrantfile is valid for Vagrant and the inventory targets its boxes.

Our machines cannot run VMs (no usable KVM), so this is what can be checked here.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_vagrantfile_validates() -> None:
    if not shutil.which("vagrant"):
        pytest.fail("vagrant is needed: `make deps` installs Debian's vagrant package")
    out = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout


def test_vagrant_inventory_targets_every_box() -> None:
    boxes = set(runpy.run_path(str(ROOT / "inventories" / "vagrant.py"))["vagrant"])
    defined = {
        line.split('"')[1]
        for line in (ROOT / "Vagrantfile").read_text().splitlines()
        if line.strip().startswith('"') and "=>" in line
    }
    assert boxes == {f"@vagrant/{name}" for name in defined}
    assert defined == {"ubuntu2204", "ubuntu2404", "debian12"}
