"""Does a KVM vCPU really run here? Boot the box's kernel once under KVM, with a deadline.

`/dev/kvm` existing proves little: on PVM hosts `KVM_CREATE_VM` succeeds, but a Debian
kernel stalls after its decompressor (`-cpu host` even aborts on an MSR). So the probe
boots the real kernel with no root file system: a vCPU that runs reaches the kernel's
"VFS: Unable to mount root fs" panic within seconds. Otherwise the VM uses qemu's software
emulation (TCG): slow, but honest.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT = 30.0  # a running KVM vCPU needs ~2 s to reach the panic
# Printed only after the kernel has run through its whole early boot.
BOOTED_MARKERS = ("Kernel panic - not syncing", "VFS: Unable to mount root fs")
KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True)
class ProbeResult:
    driver: str  # vagrant-libvirt's `driver`: "kvm" or "qemu" (TCG)
    reason: str


def probe_argv(kernel: Path, qemu: str = "qemu-system-x86_64") -> list[str]:
    """qemu boots `kernel` under KVM with no disk; panic=-1 + -no-reboot makes it exit."""
    return [
        qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
        "-nodefaults", "-nographic", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]  # fmt: skip


def decide(kvm_usable: bool, returncode: int | None, output: str, seconds: float) -> ProbeResult:
    """KVM only when the probe guest's kernel visibly ran to its panic; TCG otherwise.

    returncode None: the probe was killed at its deadline.
    """
    if not kvm_usable:
        return ProbeResult("qemu", f"{KVM_DEVICE} is missing or not writable: using TCG")
    if any(marker in output for marker in BOOTED_MARKERS):
        return ProbeResult("kvm", f"a KVM guest kernel booted to its panic in {seconds:.1f} s")
    if returncode is None:
        return ProbeResult(
            "qemu",
            f"a KVM guest made no visible progress in {seconds:.0f} s (stalled vCPU): using TCG",
        )
    last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
    return ProbeResult("qemu", f"a KVM guest failed (qemu exited {returncode}: {last}): using TCG")


def probe_kvm(kernel: Path, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Run the probe guest and decide; never takes much longer than `timeout`."""
    usable = KVM_DEVICE.exists() and os.access(KVM_DEVICE, os.R_OK | os.W_OK)
    if not usable:
        return decide(False, None, "", 0.0)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            probe_argv(kernel), capture_output=True, text=True, errors="replace",
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        rc: int | None = proc.returncode
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
    except FileNotFoundError:
        return ProbeResult("qemu", "qemu-system-x86_64 is missing (`make vagrant` installs it)")
    return decide(True, rc, output, time.monotonic() - started)
