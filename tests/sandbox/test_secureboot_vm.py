"""UEFI Secure Boot in a VM (issue 15, item 6), in CI: `make vm-secureboot`'s scenario.

A copy of the box boots through OVMF with Microsoft's keys, Debian's signed shim and grub
and its signed kernel, locked down; on it the host profile must read Secure Boot on and the
DKMS key not enrolled, the kernel must refuse DKMS's module, and gpu_check must quote the
refusal (README: Vagrant, Secure Boot). About 2-3 min under TCG with the box cached.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from autoglm_testbed.vagrant_vm import readable_tail

ROOT = Path(__file__).resolve().parents[2]
NAME = os.environ.get("AUTOGLM_SANDBOX_NAME", "pytest")[:6] + "sb"
NET = int(os.environ.get("AUTOGLM_SANDBOX_NET", "2")) + 150


def test_a_secure_boot_vm_refuses_the_dkms_module_and_every_read_says_why() -> None:
    argv = [sys.executable, "-m", "autoglm_testbed.secureboot_vm", "--name", NAME]
    done = subprocess.run(
        [*argv, "--net", str(NET)], cwd=ROOT, capture_output=True, text=True, timeout=2400,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 0, readable_tail(output, 40)
    assert "SecureBoot enabled" in output and "secure_boot=on" in output
    assert "Key was rejected by service" in output
    # it stopped its qemu and removed its files
    assert not (ROOT / ".sandbox" / NAME).exists()
    running = subprocess.run(["pgrep", "-f", f".sandbox/{NAME}/"], capture_output=True)
    assert running.returncode == 1, running.stdout
