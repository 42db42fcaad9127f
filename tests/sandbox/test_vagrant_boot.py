"""The part of the VM scenario (issue 15) that fits CI: box, boot, SSH, pyinfra, teardown.

`make vagrant` (two converges, a reboot) and `make vagrant-kernel` take 15-60 min under
TCG on our 2-core machines, so CI runs what `make vagrant-boot` runs instead, for Debian 12
and Debian 13 (`DEBIAN=13`, trixie's own box, base and kernel): the box is
built from Debian's packages (or taken from its cache), a fresh VM boots it under the
probed hypervisor, and the boot check reads on the VM that it runs the box's own kernel
from its own disk through its bootloader, Vagrant swapped the insecure key, and pyinfra's
@vagrant connector reaches it (README: Vagrant). Then everything it made is removed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm_testbed.hosts import _NAME_RE
from autoglm_testbed.vagrant_vm import LIBVIRT_URI, MACHINE_ID, existing_vm_state, readable_tail

ROOT = Path(__file__).resolve().parents[2]
# Beside the session's sandbox (its own bridge and subnet), never on `make vagrant`'s net 3.
PREFIX = os.environ.get("AUTOGLM_SANDBOX_NAME", "pytest")[:6]
NETS = {"12": 100, "13": 150}  # added to the session's net
# Box build (~80 s cold; Debian 13 adds its debootstrap, ~90-160 s), the TCG boot (~200 s
# here), the boot check; vagrant up is cut at 1200 s.
BOOT_CHECK_TIMEOUT = 2000


def vagrant_vm(debian: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    net = int(os.environ.get("AUTOGLM_SANDBOX_NET", "2")) + NETS[debian]
    argv = [sys.executable, "-m", "autoglm_testbed.vagrant_vm", "--name", sandbox_name(debian)]
    return subprocess.run(
        [*argv, "--net", str(net), "--debian", debian, *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def sandbox_name(debian: str) -> str:
    # Two characters after the 6-character prefix: names are limited to 8 (ci-33 failed on
    # "pytestv13").
    return PREFIX + ("vm" if debian == "12" else "vt")


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("debian", sorted(NETS))
def test_the_vm_sandbox_names_are_valid_sandbox_names(debian: str) -> None:
    # Checked here, in seconds, instead of 40 minutes into a CI run.
    assert _NAME_RE.match(sandbox_name(debian)), sandbox_name(debian)
    assert len({sandbox_name(d) for d in NETS}) == len(NETS)


@pytest.mark.parametrize("debian", ["12", "13"])
def test_a_fresh_vm_boots_the_box_s_own_kernel_and_answers_pyinfra(debian: str) -> None:
    if existing_vm_state() is not None:
        pytest.fail(
            "a VM from `make vagrant` exists in this checkout; run `make vagrant-down` "
            "before the test suite",
            pytrace=False,
        )
    libvirtd_was_running = virsh("version").returncode == 0
    started = time.monotonic()
    try:
        check = vagrant_vm(debian, "--boot-check", timeout=BOOT_CHECK_TIMEOUT)
        took = time.monotonic() - started
        output = check.stdout + check.stderr
        print(output)  # the timings, shown with -s or on failure
        assert check.returncode == 0, f"boot check failed after {took:.0f} s:\n" + readable_tail(
            output, 40
        )
        # Read again here, not only through the boot check: libvirt runs the VM...
        domain = MACHINE_ID.read_text().strip()
        assert virsh("domstate", domain).stdout.strip() == "running"
        # ...and the summary reports the kernel the VM runs, the box's own.
        summary = re.search(r"Debian (\S+): kernel (\S+) \(the box's (\S+)\) under (\S+),", output)
        assert summary, output
        assert summary[1] == debian, output
        assert summary[2] == summary[3] and summary[4] in ("qemu", "kvm")
    finally:
        down = vagrant_vm(debian, "--down", "--purge", timeout=600)
    assert down.returncode == 0, down.stdout + down.stderr
    # Nothing left behind: VM, libvirt network and pool, bridge, the daemons we started.
    assert existing_vm_state() is None
    name = sandbox_name(debian)
    assert not (ROOT / ".sandbox" / name).exists()
    assert not Path(f"/sys/class/net/ag-{name}-br").exists()
    assert not Path(f"/var/lib/libvirt/images/autoglm-{name}").exists()
    assert not Path(f"/etc/libvirt/qemu/networks/autoglm-{name}.xml").exists()
    assert not Path(f"/etc/libvirt/storage/autoglm-{name}.xml").exists()
    if not libvirtd_was_running:
        assert virsh("version").returncode != 0, "libvirtd, started by the test, still answers"
