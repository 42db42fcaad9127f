"""`make vm-secureboot`: the NVIDIA module under UEFI Secure Boot in a VM (issue 15, item 6).

Debian's OVMF with Microsoft's keys enrolled (`OVMF_CODE_4M.secboot.fd` +
`OVMF_VARS_4M.ms.fd`, q35 with SMM) boots Debian's signed chain: shim (signed by
Microsoft) -> grub (signed by Debian) -> the box's kernel (signed by Debian), which then
runs locked down. That works under TCG here. On a copy of the local box:

1. in its root file system (chroot, native speed): `mokutil`, `dkms`, the box kernel's
   headers and the DKMS stand-in driver package, whose postinst makes DKMS build the
   module and sign it with DKMS's own key, which no firmware knows;
2. an EFI system partition on a second disk: shim as the removable-media loader, grub
   beside it, a grub.cfg that boots the box's root by label;
3. qemu boots both disks with Secure Boot on (user-mode network, SSH forwarded to a free
   loopback port, our own key); then, on the VM: `mokutil --sb-state`, gpu_check through
   pyinfra (the host profile's Secure Boot and DKMS-key reads, the module rows), and
   `modprobe nvidia`, which the locked-down kernel must refuse, naming the signature.

No Vagrant or libvirt here: vagrant-libvirt 0.11 cannot mark the firmware `secure`.
The VM is stopped (by PID) and its disks deleted at the end; `--keep` leaves it up.

    python -m autoglm_testbed.secureboot_vm     # make vm-secureboot
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoglm_infra.common.host_profile import (
    HostProfile,
    PciGpu,
    parse_host_profile,
    profile_script,
)
from autoglm_infra.doctor.host import secure_boot_check
from autoglm_infra.stages.preflight.problems import secure_boot_problem
from autoglm_testbed.converge import ROOT
from autoglm_testbed.dkms_standin import build_dkms_deb
from autoglm_testbed.hosts import Sandbox, SandboxError, _run, _tail
from autoglm_testbed.kvm_probe import probe_kvm
from autoglm_testbed.servers import free_port
from autoglm_testbed.vagrant_box import (
    PART_OFFSET,
    ROOT_LABEL,
    Box,
    _chroot,
    _chroot_mounts,
    ensure_box,
    kernel_release,
)
from autoglm_testbed.vagrant_kernel import VERSION, check_rows

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")  # db: Microsoft PCA 2011 + UEFI CA 2011
SIGNED_LOADERS = {  # package -> (file in it, name on the ESP)
    "shim-signed": ("usr/lib/shim/shimx64.efi.signed", "EFI/BOOT/BOOTX64.EFI"),
    "grub-efi-amd64-signed": (
        "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "EFI/BOOT/grubx64.efi",
    ),
}
ESP_MIB = 64
BOOT_TIMEOUT = {"kvm": 300, "qemu": 900}
SSH_USER = "vagrant"
VM_HOST = "127.0.0.1"  # its name in the run's inventory (SSH forwarded on loopback)


def grub_cfg() -> str:
    """Debian's signed grub reads grub.cfg beside itself ($cmdpath) and verifies the kernel
    through shim; the initrd it loads as is."""
    return (
        "set timeout=0\n"
        f"search --no-floppy --label {ROOT_LABEL} --set=root\n"
        f"linux /vmlinuz root=LABEL={ROOT_LABEL} ro console=ttyS0,115200n8\n"
        "initrd /initrd.img\n"
        "boot\n"
    )


def qemu_argv(
    driver: str, disk: Path, esp: Path, vars_fd: Path, port: int, console: Path, pidfile: Path
) -> list[str]:
    accel = "kvm" if driver == "kvm" else "tcg"
    return [
        "qemu-system-x86_64", "-machine", f"q35,smm=on,accel={accel}",
        # the firmware's variable store writable only from SMM: what Secure Boot relies on
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-cpu", "host" if driver == "kvm" else "Nehalem", "-smp", "2", "-m", "2048",
        "-drive", f"file={disk},format=raw,if=virtio",
        "-drive", f"file={esp},format=raw,if=virtio",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-display", "none", "-serial", f"file:{console}",
        "-daemonize", "-pidfile", str(pidfile),
    ]  # fmt: skip


# The GPU of the recorded H200 host (tests/fixtures/recorded/h200-nvidia-smi-q.txt: Device
# Id 0x233510DE, Bus Id 00000000:00:06.0): qemu cannot put a device with NVIDIA's vendor
# ID on the VM's PCI bus, so the preflight's verdict is also shown as if it had one.
RECORDED_GPU = PciGpu("0000:00:06.0", "0x2335", "0x030200")


def sb_problems(
    sb_state: str, profile: HostProfile, modprobe: tuple[int, str], rows: dict[str, Any]
) -> list[str]:
    """What must hold on the Secure Boot VM (each read there), as 'expected; read' lines."""
    problems = []
    if "SecureBoot enabled" not in sb_state:
        problems.append(f"mokutil --sb-state says 'SecureBoot enabled'; read {sb_state!r}")
    if (profile.efi, profile.secure_boot, profile.module_signing_key) != (
        True, "on", "not-enrolled"
    ):  # fmt: skip
        problems.append(
            "host profile: EFI, Secure Boot on, DKMS key not enrolled; read "
            f"{profile.efi}, {profile.secure_boot}, {profile.module_signing_key}"
        )
    with_gpu = secure_boot_problem(replace(profile, gpus=(RECORDED_GPU,)))
    if not with_gpu or "mokutil --import /var/lib/dkms/mok.pub" not in with_gpu:
        problems.append(f"preflight refuses a GPU host in this state with the fix; read {with_gpu}")
    code, out = modprobe
    if code == 0 or "Key was rejected by service" not in out:
        problems.append(f"modprobe nvidia: 'Key was rejected by service'; read {code}: {out!r}")
    built = rows.get("module built") or {}
    if built.get("status") != "ok" or "signed by DKMS" not in built.get("evidence", ""):
        problems.append(f"gpu_check module built: ok, signed by DKMS's key; read {built}")
    loaded = rows.get("module loaded") or {}
    if "Loading of module with unavailable key is rejected" not in loaded.get("evidence", ""):
        problems.append(f"gpu_check module loaded quotes the kernel's refusal; read {loaded}")
    return problems


class Vm:
    def __init__(self, work: Path, key: Path, port: int) -> None:
        self.work, self.key, self.port = work, key, port

    def ssh(self, script: str, timeout: float = 600) -> tuple[int, str]:
        argv = [
            "ssh", "-i", str(self.key), "-p", str(self.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"{SSH_USER}@127.0.0.1", f"sudo sh -c {shlex.quote(script)}",
        ]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        return done.returncode, done.stdout + done.stderr

    def inventory(self) -> Path:
        path = self.work / "inventory.py"
        data = {
            "ssh_port": self.port, "ssh_user": SSH_USER, "ssh_key": str(self.key),
            "ssh_known_hosts_file": "/dev/null", "ssh_strict_host_key_checking": "no",
            "_sudo": True, "nvidia_require_gpu": False,
        }  # fmt: skip
        path.write_text(f"secureboot = [({VM_HOST!r}, {data!r})]\n")
        return path


def prepare_disks(box: Box, work: Path, log: Path) -> tuple[Path, Path, str]:
    """The box's disk with the driver package installed, and an ESP with the signed chain."""
    kernel = kernel_release(box.kernel)
    with tarfile.open(box.path) as tar:
        tar.extract("box.img", work, filter="data")
    disk = work / "disk.raw"
    _run(["qemu-img", "convert", "-O", "raw", str(work / "box.img"), str(disk)], timeout=900)
    (work / "box.img").unlink()
    key = work / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    deb = build_dkms_deb(work, VERSION)
    mnt = work / "mnt"
    mnt.mkdir()
    _run(["mount", "-o", f"loop,offset={PART_OFFSET}", str(disk), str(mnt)])
    try:
        shutil.copy(deb, mnt / "tmp" / deb.name)
        keys = mnt / "home" / SSH_USER / ".ssh" / "authorized_keys"
        keys.write_text(key.with_suffix(".pub").read_text())
        # the box's resolv.conf points at resolved's stub, which does not run in a chroot
        resolv = mnt / "etc" / "resolv.conf"
        resolv.unlink()
        shutil.copy("/etc/resolv.conf", resolv)
        with _chroot_mounts(mnt):
            _chroot(mnt, "apt-get", "update", "-q", logfile=log)
            _chroot(mnt, "apt-get", "install", "-y", "-q", "--no-install-recommends", "mokutil",
                    "dkms", f"linux-headers-{kernel}", logfile=log, timeout=1800)  # fmt: skip
            # dh_dkms's postinst builds for the kernels that have headers: the box's, not ours
            _chroot(mnt, "dpkg", "-i", f"/tmp/{deb.name}", logfile=log, timeout=1800)
            # the signed loaders from the box's own (just updated) package lists
            fetch = "cd /tmp/loaders && apt-get download " + " ".join(SIGNED_LOADERS)
            (mnt / "tmp" / "loaders").mkdir()
            _chroot(mnt, "sh", "-c", fetch, logfile=log)
            _chroot(mnt, "apt-get", "clean", logfile=log)
        (mnt / "tmp" / deb.name).unlink()
        for fetched in (mnt / "tmp" / "loaders").glob("*.deb"):
            _run(["dpkg-deb", "-x", str(fetched), str(work / "loaders")])
        shutil.rmtree(mnt / "tmp" / "loaders")
        resolv.unlink()
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    finally:
        _run(["umount", str(mnt)], check=False)
    loaders = work / "loaders"
    esp = work / "esp.img"
    with esp.open("wb") as fh:
        fh.truncate(ESP_MIB * 1024 * 1024)
    _run(["mkfs.vfat", "-F", "32", "-n", "ESP", str(esp)])
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"])
    for source, target in SIGNED_LOADERS.values():
        _run(["mcopy", "-i", str(esp), str(loaders / source), f"::/{target}"])
    (work / "grub.cfg").write_text(grub_cfg())
    _run(["mcopy", "-i", str(esp), str(work / "grub.cfg"), "::/EFI/BOOT/grub.cfg"])
    shutil.copy(OVMF_VARS, work / "vars.fd")
    return disk, esp, kernel


def stop(pid: int, timeout: float = 30) -> None:
    """SIGTERM the qemu we started (its pidfile's PID) and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def show(title: str, text: str) -> None:
    print(f"==> {title}")
    print("    " + "\n    ".join(text.strip().splitlines()))


def wait_for_ssh(vm: Vm, pid: int, timeout: float, console: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise SandboxError(f"qemu exited; console:\n{_tail(console, 15)}") from None
        if vm.ssh("true", timeout=30)[0] == 0:
            return time.monotonic() - started
        time.sleep(5)
    raise SandboxError(
        f"no SSH answer within {timeout:.0f} s; last lines of {console}:\n{_tail(console, 15)}"
    )


def run(sandbox: Sandbox, keep: bool) -> int:
    """The scenario; unless keep, its files go whether it passed or not (qemu is stopped)."""
    try:
        return _scenario(sandbox, keep)
    finally:
        if not keep:
            sandbox.down()  # the work dir (disks, key), the base copy, the state dir


def _scenario(sandbox: Sandbox, keep: bool) -> int:
    sandbox._init_state_dir()  # marks it as a sandbox state dir before anything is written
    work = sandbox.state_dir / "secureboot"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log, console, pidfile = work / "build.log", work / "console.log", work / "qemu.pid"
    started = time.monotonic()
    print("==> disks: the box + mokutil, dkms, headers, the DKMS stand-in; an ESP with shim")
    box = ensure_box(sandbox)
    disk, esp, kernel = prepare_disks(box, work, log)
    prepared = time.monotonic() - started
    print(f"    done in {prepared:.0f} s (kernel {kernel}; log {log})")
    driver = probe_kvm(box.kernel).driver
    port = free_port()
    vm = Vm(work, work / "id_ed25519", port)
    print(f"==> boot with Secure Boot on ({driver}; SSH on 127.0.0.1:{port})")
    _run(qemu_argv(driver, disk, esp, work / "vars.fd", port, console, pidfile))
    pid = int(pidfile.read_text())
    problems: list[str] = []
    try:
        boot_s = wait_for_ssh(vm, pid, BOOT_TIMEOUT[driver], console)
        print(f"    answering SSH after {boot_s:.0f} s")
        _, sb_state = vm.ssh("mokutil --sb-state; dmesg | grep -i -m3 -e secureboot -e lockdown")
        show("mokutil --sb-state, dmesg", sb_state)
        _, keys = vm.ssh("ls /sys/firmware/efi/efivars | grep -e ^SecureBoot -e ^Mok; "
                         "mokutil --test-key /var/lib/dkms/mok.pub")  # fmt: skip
        show("EFI variables, DKMS's key", keys)
        _, lines = vm.ssh(profile_script("/"))
        profile = parse_host_profile(lines.splitlines())
        show("host profile (preflight's read)", lines)
        print(f"    doctor's row: {secure_boot_check(profile)}")
        with_gpu = secure_boot_problem(replace(profile, gpus=(RECORDED_GPU,)))
        print(f"    preflight, were the recorded H200 on this bus: {with_gpu}")
        modprobe = vm.ssh("modprobe nvidia", 300)
        _, klog = vm.ssh("dmesg | tail -n 2")
        show(f"modprobe nvidia (exit {modprobe[0]}), then dmesg", modprobe[1] + klog)
        rows, tail = check_rows(work, vm.inventory(), VM_HOST)
        for name in ("module built", "module loaded"):
            print(f"    gpu_check {name}: {rows.get(name)}")
        if not rows:
            problems.append(f"gpu_check: {tail}")
        problems += sb_problems(sb_state, profile, modprobe, rows)
    finally:
        if not keep:
            stop(pid)
    print(f"==> total {time.monotonic() - started:.0f} s")
    if problems:
        print("error:", *problems, sep="\n    ", file=sys.stderr)
        print(f"    last lines of the VM's console:\n{_tail(console, 10)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoglm_testbed.secureboot_vm")
    parser.add_argument("--keep", action="store_true", help="leave the VM running")
    parser.add_argument("--name", default="secboot", help="sandbox name (default secboot)")
    parser.add_argument("--net", type=int, default=106, help="its registry slot (default 106)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="    %(message)s")
    try:
        sandbox = Sandbox(args.name, net=args.net, state_dir=ROOT / ".sandbox" / args.name)
        return run(sandbox, args.keep)
    except (SandboxError, subprocess.SubprocessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
