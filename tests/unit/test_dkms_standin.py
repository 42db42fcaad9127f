"""The stand-in DKMS driver package: its layout follows NVIDIA's DKMS packages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from autoglm_testbed.dkms_standin import build_dkms_deb, dkms_conf, package_files


def test_source_tree_is_what_dkms_expects() -> None:
    files = package_files("550.54.15")
    assert set(files) >= {
        "usr/src/nvidia-550.54.15/dkms.conf",
        "usr/src/nvidia-550.54.15/Makefile",
        "usr/src/nvidia-550.54.15/nvidia.c",
    }
    conf = dkms_conf("550.54.15")
    assert 'PACKAGE_NAME="nvidia"' in conf and 'PACKAGE_VERSION="550.54.15"' in conf
    assert 'AUTOINSTALL="yes"' in conf and "${kernel_source_dir}" in conf


def test_module_refuses_to_load_without_a_gpu_like_the_real_one() -> None:
    source = package_files("550.54.15")["usr/src/nvidia-550.54.15/nvidia.c"][0]
    assert "pci_get_device(NV_VENDOR" in source and "PCI_BASE_CLASS_DISPLAY" in source
    assert "NVRM: No NVIDIA GPU found." in source and "return -ENODEV;" in source
    assert 'MODULE_VERSION("550.54.15")' in source


def test_maintainer_scripts_are_dh_dkms_s() -> None:
    files = package_files("550.54.15", package="nvidia-kernel-open-dkms")
    control, postinst = files["DEBIAN/control"][0], files["DEBIAN/postinst"]
    assert control.startswith("Package: nvidia-kernel-open-dkms\nVersion: 550.54.15-1\n")
    assert "Depends: dkms" in control
    assert "/usr/lib/dkms/common.postinst nvidia 550.54.15" in postinst[0] and postinst[1] == 0o755


def test_deb_builds(tmp_path: Path) -> None:
    if not shutil.which("dpkg-deb"):
        pytest.fail("dpkg-deb is needed: `make deps` installs dpkg-dev")
    deb = build_dkms_deb(tmp_path, "550.54.15")
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True).stdout
    assert "root/root" in listing and "./usr/src/nvidia-550.54.15/nvidia.c" in listing
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"],
                            capture_output=True, text=True).stdout  # fmt: skip
    assert fields == "Package: nvidia-kernel-dkms\nVersion: 550.54.15-1\n"
