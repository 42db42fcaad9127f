"""`make vagrant-driver`: the NVIDIA stage installs the driver on a VM and reboots it (issue 15).

On the VM `make vagrant` boots (same box, network and stand-ins), whose NVIDIA repository
stand-in ships the module packages as real DKMS sources that depend on dkms, as NVIDIA's do:

1. Setup, shaped like a fresh GPU host: the box's cloud kernel has no DRM drivers, so
   Debian's generic kernel is installed and booted (through pyinfra), and nouveau is loaded,
   as it is on a GPU host where it drove the card at boot. (The VM has no NVIDIA device:
   qemu cannot put NVIDIA's vendor ID on the bus, so nouveau binds nothing.)
2. `pyinfra inventories/vagrant.py deploys/nvidia.py` with `nvidia_reboot: if-needed`: the
   driver closure (dkms comes with it), the running kernel's headers (DKMS builds the
   module for it), the nouveau blacklist, the initramfs, and the stage's own reboot.
3. Read on the VM: exactly one more boot, nouveau not loaded, the blacklist inside the
   running kernel's initramfs (`lsinitramfs`), `dkms status` installed for `uname -r`, the
   NVIDIA packages held, gpu_check's "module built" ok.
4. The same converge again: nothing changed, no reboot.

    python -m autoglm_testbed.vagrant_driver     # make vagrant-driver; VM stays up
    python -m autoglm_testbed.vagrant_vm --down  # make vagrant-down

Ends non-zero naming each expectation that did not hold; every step is bounded.
"""

from __future__ import annotations

import subprocess
import sys
import time

from autoglm_infra.stages.nvidia import files as nf
from autoglm_testbed.converge import ROOT, ConvergeResult, describe_failure, run_pyinfra
from autoglm_testbed.hosts import _tail
from autoglm_testbed.vagrant_kernel import APT, Scenario, row_text, run_scenario
from autoglm_testbed.vagrant_vm import INVENTORY

GENERIC = "linux-image-amd64"  # Debian's generic kernel: nouveau is one of its modules
CONVERGE_TIMEOUT = 5400  # dkms, a compiler and headers under TCG on a loaded 2-core machine
BOOTS = "journalctl --list-boots --no-pager -q | wc -l"


def blacklist_read(kernel: str) -> str:
    """Shell text: what the VM's running state says about nouveau, one fact per line."""
    name = nf.NOUVEAU_BLACKLIST.rsplit("/", 1)[1]
    return (
        f"echo boots=$({BOOTS}); echo kernel=$(uname -r); "
        "[ -d /sys/module/nouveau ] && echo nouveau=loaded || echo nouveau=absent; "
        f"lsinitramfs /boot/initrd.img-{kernel} | grep -q 'etc/modprobe.d/{name}$' "
        "&& echo initramfs=blacklist || echo initramfs=none"
    )


def facts(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class DriverScenario(Scenario):
    def reboot(self, why: str) -> bool:
        print(f"==> reboot through pyinfra (server.reboot): {why}")
        started = time.monotonic()
        try:
            done = run_pyinfra(INVENTORY, "server.reboot", timeout=self.reboot_timeout)
        except subprocess.TimeoutExpired:
            self.problems.append(
                f"the VM did not come back within {self.reboot_timeout} s of the reboot; last "
                f"lines of its console ({self.console}):\n{_tail(self.console, 15)}"
            )
            return False
        self.timings.append((f"reboot ({why})", time.monotonic() - started))
        if done.returncode != 0:
            self.problems.append(f"the reboot failed:\n{describe_failure(done)}")
        return done.returncode == 0

    def converge(self, title: str) -> ConvergeResult | None:
        print(f"==> {title}: pyinfra {INVENTORY.relative_to(ROOT)} deploys/nvidia.py")
        try:
            result = run_pyinfra(INVENTORY, "deploys/nvidia.py", timeout=CONVERGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.problems.append(f"{title}: no end within {CONVERGE_TIMEOUT} s")
            return None
        self.timings.append((title, result.seconds))
        print(f"    {len(result.changed())} operations changed in {result.seconds:.0f} s")
        if result.returncode != 0:
            self.problems.append(f"{title} failed:\n{describe_failure(result)}")
            return None
        return result

    def with_nouveau(self) -> str:
        """Boot a kernel that has nouveau and load it; the running kernel, "" on failure."""
        code, out = self.step("nouveau in the running kernel?", "modinfo -n nouveau", 120)
        if code != 0:
            code, out = self.step(
                f"Debian's generic kernel ({GENERIC}; the cloud kernel has no nouveau)",
                f"apt-get update -q >/dev/null && {APT} install {GENERIC} >/dev/null && "
                "readlink /vmlinuz",
            )
            if code != 0:
                self.problems.append(f"installing {GENERIC}: {out.strip()[-400:]}")
                return ""
            if not self.reboot("boot the generic kernel"):
                return ""
        code, out = self.step(
            "modprobe nouveau (as it drives a GPU at boot)", "modprobe nouveau && uname -r", 300
        )
        self.expect(code == 0, "nouveau loads in the running kernel", out.strip()[-400:])
        return out.strip().splitlines()[-1] if code == 0 else ""

    def run(self) -> None:
        kernel = self.with_nouveau()
        if not kernel:
            return
        _, before = self.vm.text(blacklist_read(kernel), 300)
        before_facts = facts(before)
        first = self.converge("converge 1 (installs the driver, reboots once)")
        if first is None:
            return
        self.expect(
            "nouveau is loaded" in first.stderr,
            "the stage said why it rebooted (nouveau is loaded)",
            "\n".join(first.stderr.splitlines()[-20:]),
        )
        _, after = self.vm.text(blacklist_read(kernel), 300)
        after_facts = facts(after)
        boots = (before_facts.get("boots", "?"), after_facts.get("boots", "?"))
        self.expect(
            boots[0].isdigit() and boots[1] == str(int(boots[0]) + 1),
            "the converge rebooted the VM exactly once (journalctl --list-boots)",
            " -> ".join(boots),
        )
        self.expect(
            after_facts.get("kernel") == kernel,
            f"the VM runs {kernel}",
            after_facts.get("kernel", ""),
        )
        self.expect(after_facts.get("nouveau") == "absent", "nouveau is not loaded", after)
        self.expect(
            after_facts.get("initramfs") == "blacklist",
            f"the nouveau blacklist is inside /boot/initrd.img-{kernel} (lsinitramfs)",
            after,
        )
        code, out = self.step("dkms status", "dkms status nvidia", 300)
        self.expect(
            code == 0 and f", {kernel}, x86_64: installed" in out,
            f"dkms status: the stand-in module installed for {kernel}",
            out.strip(),
        )
        code, out = self.step("held packages", "apt-mark showhold", 120)
        held = out.split()
        self.expect(
            code == 0 and any(n.startswith("nvidia-kernel-") for n in held),
            "the NVIDIA packages are held (apt-mark showhold)",
            " ".join(held),
        )
        built = row_text(self.rows("after the converge").get("module built"))
        self.expect(
            built.startswith("ok: nvidia") and f"for the running kernel {kernel}" in built,
            "gpu_check: module built ok for the running kernel",
            built,
        )
        second = self.converge("converge 2 (must change nothing)")
        if second is None:
            return
        self.expect(not second.changed(), "converge 2 changed nothing", ", ".join(second.changed()))
        _, again = self.vm.text(BOOTS, 120)
        self.expect(
            again.strip() == boots[1], "converge 2 did not reboot", f"{boots[1]} -> {again.strip()}"
        )


def main(argv: list[str] | None = None) -> int:
    return run_scenario("python -m autoglm_testbed.vagrant_driver", DriverScenario, argv)


if __name__ == "__main__":
    sys.exit(main())
