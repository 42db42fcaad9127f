"""`make vagrant-kernel`: the NVIDIA kernel module on the VM's own kernel (issue 15, item 3).

On the VM `make vagrant` boots (same box, network and stand-ins; no converge needed):

1. Debian's `dkms` and the running kernel's headers, then the stand-in driver package
   (autoglm_testbed/dkms_standin.py, shaped like NVIDIA's `nvidia-kernel-dkms`): its
   postinst makes DKMS compile the module for the running kernel, as NVIDIA's does.
2. gpu_check through pyinfra reads it: built for the running kernel, signed by the DKMS
   key, not loaded. `modprobe nvidia` then fails with "No such device", as the real module
   does without a GPU, and gpu_check quotes the kernel's NVRM line.
3. A kernel change that forgot the headers: Debian's other kernel flavour of the same
   release (cloud <-> generic; a freshly installed kernel becomes /vmlinuz, which the box
   boots), a reboot through pyinfra, and gpu_check must say "no nvidia module for the
   running kernel" with the fix. The fix, run as printed, must make gpu_check read the
   module as built for the new kernel. (Debian's newer kernel, 6.12 from
   bookworm-backports, double-faults early in boot under qemu 7.2's TCG here, so a newer
   version cannot be what changes; for DKMS a new flavour is the same event: a kernel
   release string with no module built for it.)

    python -m autoglm_testbed.vagrant_kernel     # make vagrant-kernel; VM stays up
    python -m autoglm_testbed.vagrant_vm --down  # make vagrant-down

Ends non-zero naming each expectation that did not hold; every step is bounded.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autoglm_infra.common.checks import json_file_name
from autoglm_testbed.converge import ROOT, ConvergeResult, describe_failure, run_pyinfra
from autoglm_testbed.dkms_standin import build_dkms_deb
from autoglm_testbed.hosts import Sandbox, SandboxError, _tail
from autoglm_testbed.vagrant_vm import INVENTORY, MACHINE, REBOOT_TIMEOUT, BootedVm, boot_vm

VERSION = "550.54.15"
HOST_NAME = f"@vagrant/{MACHINE}"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends"
STEP_TIMEOUT = 3600  # an apt step under TCG on a loaded 2-core machine


class VmCommand:
    """Commands on the VM as root over SSH, with the config `vagrant ssh-config` prints
    (one SSH connection per command, no Ruby start-up each time)."""

    def __init__(self, config: Path) -> None:
        self.config = config

    @classmethod
    def from_vagrant(cls, directory: Path) -> VmCommand:
        out = subprocess.run(
            ["vagrant", "ssh-config", MACHINE], cwd=ROOT, capture_output=True, text=True,
            timeout=120, check=True,
        )  # fmt: skip
        config = directory / "ssh_config"
        config.write_text(out.stdout)
        return cls(config)

    def run(
        self, script: str, timeout: float = STEP_TIMEOUT, data: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """`script` under sudo; `data`, if given, is its standard input."""
        argv = ["ssh", "-F", str(self.config), MACHINE, f"sudo sh -c {shlex.quote(script)}"]
        return subprocess.run(
            argv,
            input=data,
            capture_output=True,
            timeout=timeout,
            stdin=None if data is not None else subprocess.DEVNULL,
        )

    def text(self, script: str, timeout: float = STEP_TIMEOUT) -> tuple[int, str]:
        done = self.run(script, timeout)
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def check_rows(
    out_dir: Path,
    inventory: Path = INVENTORY,
    host: str = HOST_NAME,
    check: str = "gpu_check",
    env: dict[str, str] | None = None,
) -> tuple[dict[str, dict[str, Any]], str]:
    """A check deploy (`deploys/<check>.py`: gpu_check, doctor) through pyinfra on a VM:
    its rows by name, and pyinfra's output tail."""
    result = run_pyinfra(
        inventory,
        f"deploys/{check}.py",
        timeout=900,
        env={**(env or {}), "AUTOGLM_CHECKS_JSON": str(out_dir)},
    )
    path = out_dir / json_file_name(host, check)
    try:
        rows = {row["name"]: row for row in json.loads(path.read_text())["checks"]}
    except (OSError, ValueError, KeyError) as exc:
        return {}, f"no {check} table ({exc}):\n{describe_failure(result)}"
    path.unlink()
    return rows, "\n".join(result.stderr.splitlines()[-30:])


def row_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "(no such row)"
    fix = f" | fix: {row['fix']}" if row.get("fix") else ""
    return f"{row['status']}: {row['evidence']}{fix}"


class Scenario:
    """The steps, each recording what it expected and what it read."""

    deploy = "deploys/full.py"  # what `converge` runs
    timeout = 7200  # bounds each converge (TCG on a loaded 2-core machine)

    def __init__(self, vm: VmCommand, out_dir: Path, booted: BootedVm, console: Path) -> None:
        self.vm = vm
        self.out_dir = out_dir
        self.booted = booted
        self.reboot_timeout = REBOOT_TIMEOUT[booted.probe.driver]
        self.console = console
        self.problems: list[str] = []
        self.timings: list[tuple[str, float]] = []
        self.inventory = INVENTORY
        self.env: dict[str, str] = {}

    def expect(self, ok: bool, what: str, seen: str) -> None:
        print(f"    [{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            print(f"        read: {seen}")
            self.problems.append(f"{what}; read: {seen}")

    def step(self, title: str, script: str, timeout: float = STEP_TIMEOUT) -> tuple[int, str]:
        print(f"==> {title}")
        started = time.monotonic()
        code, out = self.vm.text(script, timeout)
        self.timings.append((title, time.monotonic() - started))
        if code != 0:
            tail = "\n        ".join(out.strip().splitlines()[-12:])
            print(f"    exit status {code}:\n        {tail}")
        return code, out

    def converge(self, title: str, *extra: str) -> ConvergeResult | None:
        print(f"==> {title}: pyinfra {self.inventory.name} {self.deploy} {' '.join(extra)}")
        try:
            result = run_pyinfra(
                self.inventory, self.deploy, *extra, timeout=self.timeout, env=self.env
            )
        except subprocess.TimeoutExpired:
            self.problems.append(f"{title}: no end within {self.timeout} s")
            return None
        self.timings.append((title, result.seconds))
        print(f"    {len(result.changed())} operations changed in {result.seconds:.0f} s")
        if result.returncode != 0:
            self.problems.append(f"{title} failed:\n{describe_failure(result)}")
            return None
        return result

    def rows(self, when: str) -> dict[str, dict[str, Any]]:
        started = time.monotonic()
        rows, tail = check_rows(self.out_dir)
        self.timings.append((f"gpu_check {when}", time.monotonic() - started))
        for name in ("module built", "module loaded"):
            print(f"    gpu_check {name}: {row_text(rows.get(name))}")
        if not rows:
            self.problems.append(f"gpu_check {when}: {tail}")
        return rows

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

    def run(self) -> None:
        _, old = self.step("running kernel", "uname -r", 60)
        old = old.strip()
        deb = build_dkms_deb(self.out_dir, VERSION)
        upload = self.vm.run(f"cat > /tmp/{deb.name}", 120, data=deb.read_bytes())
        if upload.returncode != 0:
            self.problems.append(f"copying {deb.name} to the VM: {upload.stderr.decode()[-400:]}")
            return
        code, out = self.step(
            f"dkms, linux-headers-{old}, the stand-in driver package (DKMS builds at install)",
            f"apt-get update -q >/dev/null && {APT} install dkms linux-headers-{old} "
            f">/dev/null && dpkg -i /tmp/{deb.name} && dkms status nvidia",
        )
        self.expect(
            code == 0 and f"nvidia/{VERSION}, {old}, x86_64: installed" in out,
            f"dkms status: nvidia/{VERSION} installed for the running kernel {old}",
            out.strip()[-400:],
        )
        rows = self.rows("after the install")
        built = row_text(rows.get("module built"))
        self.expect(
            built.startswith(f"ok: nvidia {VERSION} for the running kernel {old}")
            and "built by DKMS" in built,
            "module built: ok, DKMS's module for the running kernel",
            built,
        )
        code, out = self.step("modprobe nvidia (no GPU in the VM)", "modprobe nvidia", 300)
        self.expect(
            code != 0 and "No such device" in out,
            "modprobe nvidia fails with 'No such device', as nvidia.ko does without a GPU",
            out.strip(),
        )
        loaded = row_text(self.rows("after modprobe").get("module loaded"))
        self.expect(
            loaded.startswith("skip: not loaded: there is no NVIDIA GPU")
            and "NVRM: No NVIDIA GPU found." in loaded,
            "module loaded: not loaded, quoting the kernel's NVRM line",
            loaded,
        )

        other = "linux-image-amd64" if old.endswith("-cloud-amd64") else "linux-image-cloud-amd64"
        code, out = self.step(
            f"another kernel ({other}), without its headers",
            f"{APT} install {other} >/dev/null && echo vmlinuz=$(readlink /vmlinuz)",
        )
        # apt's notes (debconf, dkms) come before it on the same output
        linked = re.search(r"^vmlinuz=\S*vmlinuz-(\S+)$", out, re.MULTILINE)
        new = linked.group(1) if linked else ""
        self.expect(
            bool(new) and new != old, f"/vmlinuz names a kernel other than {old}", out[-400:]
        )
        if not new or new == old:
            return
        _, boots = self.vm.text("journalctl --list-boots --no-pager -q | wc -l", 120)
        if not self.reboot(f"boot {new}"):
            return
        _, running = self.vm.text("uname -r; journalctl --list-boots --no-pager -q | wc -l", 120)
        kernel, _, count = running.strip().partition("\n")
        self.expect(kernel == new, f"the VM runs {new} after the reboot", kernel)
        self.expect(
            count.strip() == str(int(boots.strip() or 0) + 1),
            "exactly one more boot in journalctl --list-boots",
            f"{boots.strip()} -> {count.strip()}",
        )
        built_row = self.rows("after the kernel change").get("module built")
        built = row_text(built_row)
        fix = f"install linux-headers-{new} and run `dkms autoinstall -k {new}`"
        self.expect(
            built.startswith(f"fail: no nvidia module for the running kernel {new}")
            and f"DKMS has nvidia {VERSION} for {old}" in built
            and fix in built,
            "module built: fail, naming the running kernel, the kernel DKMS built for, the fix",
            built,
        )
        code, out = self.step(
            "the fix, as gpu_check printed it",
            f"{APT} install linux-headers-{new} >/dev/null && dkms autoinstall -k {new} && "
            "dkms status nvidia",
        )
        self.expect(
            code == 0 and f"nvidia/{VERSION}, {new}, x86_64: installed" in out,
            f"dkms status: installed for {new} too",
            out.strip()[-400:],
        )
        built = row_text(self.rows("after the fix").get("module built"))
        self.expect(
            built.startswith(f"ok: nvidia {VERSION} for the running kernel {new}"),
            "module built: ok for the new kernel",
            built,
        )


def run_scenario(prog: str, scenarios: dict[str, type[Scenario]], argv: list[str] | None) -> int:
    """Boot the `make vagrant` VM, run a scenario on it, print its timings and problems
    (the first of `scenarios` unless --deploy names another)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--name", default="vagrant", help="sandbox name (default vagrant)")
    parser.add_argument("--net", type=int, default=3, help="10.231.<net>.0/24 (default 3)")
    if len(scenarios) > 1:
        parser.add_argument("--deploy", choices=list(scenarios), default=next(iter(scenarios)))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    scenario = scenarios[getattr(args, "deploy", next(iter(scenarios)))]
    logging.basicConfig(level=logging.INFO, format="    %(message)s")
    started = time.monotonic()
    try:
        sandbox = Sandbox(args.name, net=args.net, state_dir=ROOT / ".sandbox" / args.name)
        booted = boot_vm(sandbox)
        if booted is None:
            return 1
        with tempfile.TemporaryDirectory() as tmp:
            vm = VmCommand.from_vagrant(Path(tmp))
            console = sandbox.state_dir / "console.log"
            ran = scenario(vm, Path(tmp), booted, console)
            ran.run()
    except (SandboxError, subprocess.SubprocessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("==> summary")
    print(f"    boot to SSH {booted.boot_seconds:.0f} s ({booted.probe.driver})")
    for title, seconds in ran.timings:
        print(f"    {seconds:7.0f} s  {title}")
    print(f"    total {time.monotonic() - started:.0f} s; the VM stays up: make vagrant-down")
    if ran.problems:
        print("error: expectations that did not hold:", file=sys.stderr)
        for problem in ran.problems:
            print(f"    - {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_scenario("python -m autoglm_testbed.vagrant_kernel", {"kernel": Scenario}, argv)


if __name__ == "__main__":
    sys.exit(main())
