"""`make vagrant` / `make vagrant-driver`: a VM converged by the deploy, which reboots it once.

On the VM `make vagrant` boots (same box, network and stand-ins), whose NVIDIA repository
stand-in ships the module packages as real DKMS sources that depend on dkms, as NVIDIA's do:

1. Setup, shaped like a fresh GPU host: the box's cloud kernel has no DRM drivers, so
   Debian's generic kernel is installed and booted (through pyinfra), and nouveau is loaded,
   as it is on a GPU host where it drove the card at boot. (The VM has no NVIDIA device:
   qemu cannot put NVIDIA's vendor ID on the bus, so nouveau binds nothing.)
2. `pyinfra inventories/vagrant.py deploys/full.py` (`make vagrant`) or `deploys/nvidia.py`
   (`make vagrant-driver`, the NVIDIA stage alone) with `nvidia_reboot: if-needed`: the
   driver closure (dkms comes with it), the running kernel's headers (DKMS builds the
   module for it), the nouveau blacklist, the initramfs, and the stage's own reboot.
3. Read on the VM: a hypervisor, exactly one more boot, the system running, nouveau not
   loaded, the blacklist inside the running kernel's initramfs (`lsinitramfs`), `dkms
   status` installed for `uname -r`, the NVIDIA packages held, gpu_check's "module built" ok.
4. The same converge again: nothing changed, no reboot.
5. `nvidia_reboot: never` with nouveau loaded again: "REBOOT REQUIRED", the marker that
   gpu_check reads, nothing else changed, no reboot; again: nothing; with nouveau unloaded,
   the marker removed.

    python -m autoglm_testbed.vagrant_driver --deploy full  # make vagrant; VM stays up
    python -m autoglm_testbed.vagrant_driver                # make vagrant-driver
    python -m autoglm_testbed.vagrant_vm --down             # make vagrant-down

Ends non-zero naming each expectation that did not hold; every step is bounded.
"""

from __future__ import annotations

import re
import sys

from autoglm_infra.stages.nvidia.files import REBOOT_REQUIRED
from autoglm_testbed.converge import ConvergeResult
from autoglm_testbed.vagrant_kernel import APT, Scenario, row_text, run_scenario
from autoglm_testbed.vagrant_vm import kernel_facts, reboot_problems

REBOOT_OPERATION = "NVIDIA: reboot when"  # its name in autoglm_infra/stages/nvidia/deploy.py
GENERIC = "linux-image-amd64"  # Debian's generic kernel: nouveau is one of its modules
_NVIDIA_PACKAGE = re.compile(r"^Inst (nvidia-|libnvidia-|libcuda|cuda-|cudnn|libcudnn)")


class DriverScenario(Scenario):
    deploy = "deploys/nvidia.py"
    timeout = 5400  # dkms, a compiler and headers under TCG on a loaded 2-core machine

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
        before = kernel_facts()
        first = self.converge("converge 1 (installs the driver, reboots once)")
        if first is None:
            return
        self.expect(
            "nouveau is loaded" in first.stderr,
            "the stage said why it rebooted (nouveau is loaded)",
            "\n".join(first.stderr.splitlines()[-20:]),
        )
        after = kernel_facts()
        self.expect(after.get("virt", "none") not in ("none", ""), "a hypervisor", str(after))
        self.expect(after.get("kernel") == kernel, f"the VM runs {kernel}", str(after))
        problems = reboot_problems(before, after)
        for problem in problems:
            self.expect(False, "the converge rebooted the VM once, cleanly", problem)
        if not problems:
            print(
                f"    [ok] exactly one more boot ({before.get('boots')} -> {after.get('boots')}),"
                " the system running, nouveau not loaded, its blacklist in the running "
                "kernel's initramfs"
            )
        code, out = self.step("dkms status", "dkms status nvidia", 300)
        self.expect(
            code == 0 and f", {kernel}, x86_64: installed" in out,
            f"dkms status: the stand-in module installed for {kernel}",
            out.strip(),
        )
        code, out = self.step(
            "held and pinned",
            "apt-mark showhold; echo @@; apt-get -s -q dist-upgrade | grep '^Inst' || true",
            300,
        )
        held, _, upgrades = out.partition("@@")
        self.expect(
            code == 0 and any(n.startswith("nvidia-") for n in held.split()),
            "the planned NVIDIA packages are held (apt-mark showhold)",
            " ".join(held.split()),
        )
        moving = [line for line in upgrades.splitlines() if _NVIDIA_PACKAGE.match(line)]
        self.expect(
            not moving,
            "apt would move no package of the driver's closure (dkms module included)",
            "; ".join(moving),
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
        again = kernel_facts().get("boots")
        self.expect(
            again == after.get("boots"),
            "converge 2 did not reboot",
            f"{after.get('boots')} -> {again}",
        )
        self.never_policy(kernel)

    def never_policy(self, kernel: str) -> None:
        """`nvidia_reboot: never` on a host that needs a reboot (nouveau loaded again): the
        converge says "reboot required", writes the marker the doctor and gpu_check read, and
        changes nothing else; again, nothing; once the reason is gone, the marker goes."""
        code, out = self.step(
            "modprobe nouveau again (blacklisted, but loaded by name, as at boot before the "
            "blacklist)",
            "modprobe nouveau && grep -c '^nouveau ' /proc/modules",
            300,
        )
        self.expect(code == 0, "nouveau loads by name", out.strip()[-400:])
        if code != 0:
            return
        boots = kernel_facts().get("boots")
        never = ("--data", "nvidia_reboot=never")
        third = self.converge("converge 3 with nvidia_reboot=never (nouveau loaded)", *never)
        if third is None:
            return
        self.expect(
            "REBOOT REQUIRED (nouveau is loaded" in third.stderr,
            "converge 3 says REBOOT REQUIRED and why",
            "\n".join(third.stderr.splitlines()[-20:]),
        )
        self.expect_only_the_marker(third, "converge 3 changed only the reboot-required marker")
        code, marker = self.step("the marker", f"cat {REBOOT_REQUIRED}", 60)
        self.expect(
            code == 0 and "nouveau is loaded" in marker,
            f"{REBOOT_REQUIRED} names the reason (nouveau is loaded)",
            marker,
        )
        reboot = row_text(self.rows("with nvidia_reboot=never").get("reboot"))
        self.expect(
            reboot.startswith("fail: reboot required: driver: nouveau is loaded"),
            "gpu_check: reboot required, from the marker",
            reboot,
        )
        fourth = self.converge("converge 4 with nvidia_reboot=never (must change nothing)", *never)
        if fourth is None:
            return
        self.expect(not fourth.changed(), "converge 4 changed nothing", ", ".join(fourth.changed()))
        code, out = self.step("modprobe -r nouveau (the reason gone)", "modprobe -r nouveau", 300)
        self.expect(code == 0, "nouveau unloads (it drives no device here)", out.strip()[-400:])
        fifth = self.converge("converge 5 with nvidia_reboot=never (removes the marker)", *never)
        if fifth is None:
            return
        self.expect_only_the_marker(fifth, "converge 5 removed only the marker")
        code, _ = self.step("the marker gone", f"test ! -e {REBOOT_REQUIRED}", 60)
        self.expect(code == 0, f"{REBOOT_REQUIRED} is gone", f"exit status {code}")
        again = kernel_facts().get("boots")
        self.expect(again == boots, "converges 3-5 did not reboot", f"{boots} -> {again}")

    def expect_only_the_marker(self, result: ConvergeResult, what: str) -> None:
        changed = result.changed()
        self.expect(
            len(changed) == 1 and changed[0].startswith(REBOOT_OPERATION),
            what,
            ", ".join(changed),
        )


class FullScenario(DriverScenario):
    """`make vagrant`: the complete deploy (the CPU torch venv is most of its first run)."""

    deploy = "deploys/full.py"
    timeout = 7200


def main(argv: list[str] | None = None) -> int:
    return run_scenario(
        "python -m autoglm_testbed.vagrant_driver",
        {"nvidia": DriverScenario, "full": FullScenario},
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
