"""A vagrant-libvirt box built locally from Debian's packages (public boxes are unreachable).

The sandbox's golden debootstrap rootfs plus a kernel (`linux-image-cloud-amd64`), udev,
networkd/resolved and extlinux, written as an ext4 partition into a disk image whose MBR
and partition boot sector are extlinux's own: the VM boots its *installed* kernel through
the `/vmlinuz` and `/initrd.img` links Debian's kernel packages maintain, so a kernel
upgrade plus a reboot changes the running kernel. The vagrant user carries Vagrant's
insecure public key (Vagrant swaps in a fresh key on the first `vagrant up`).

Built once per content key into ~/.cache/autoglm-infra/vagrant-box/, then `vagrant box add`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoglm_testbed.hosts import (
    DEBIAN_SUITES,
    DEFAULT_CACHE_DIR,
    SUITE,
    Sandbox,
    SandboxError,
    _flock,
    _mounts_under,
    _run,
    _tail,
    iso_week,
)

log = logging.getLogger(__name__)

BOX_NAME = "autoglm/debian12-local"  # box_name("bookworm"): the default machine's
BOX_CACHE_DIR = DEFAULT_CACHE_DIR.parent / "vagrant-box"
# Added on top of the sandbox base: a kernel and what booting it on a real disk needs.
BOX_PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "udev",
    "kmod",
    "e2fsprogs",
    "zstd",
    "extlinux",
    "systemd-resolved",
    "systemd-timesyncd",
)
BOX_VERSION = 1  # bump when the build steps change in a way the file table does not show
DISK_GIB = 12  # the tiny model's venv (~2 GB) plus the OS, with room for a kernel upgrade
ROOT_LABEL = "autoglm-root"
PART_OFFSET = 1024 * 1024  # the partition starts at 1 MiB, as parted aligns it
INSECURE_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
)


@dataclass(frozen=True)
class Box:
    """A built box file and what was measured while building it."""

    path: Path
    key: str
    kernel: Path  # the installed kernel, for the KVM probe
    built_seconds: float | None  # None: taken from the cache


def kernel_release(vmlinuz: Path) -> str:
    """The release string (`uname -r`) a bzImage carries in its boot header.

    Linux boot protocol >= 2.00: offset 0x20E holds the version string's offset minus 0x200
    (Documentation/arch/x86/boot.rst). "" when the file is no bzImage.
    """
    head = vmlinuz.read_bytes()[:0x10000]
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return ""
    start = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    version = head[start : start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return version.split(" ", 1)[0]


def insecure_public_key() -> str:
    """Vagrant's well-known insecure public key, from the installed vagrant package."""
    for pattern in INSECURE_KEY_GLOBS:
        for path in sorted(glob.glob(pattern)):
            return Path(path).read_text().strip() + "\n"
    raise SandboxError(
        "Vagrant's insecure public key (keys/vagrant.pub) was not found in "
        f"{' or '.join(INSECURE_KEY_GLOBS)}: install Debian's `vagrant` package (`make deps`)"
    )


def box_prep_files(public_key: str) -> dict[str, tuple[str, int]]:
    """Files written into the box's rootfs: path -> (content, mode). Part of the cache key."""
    return {
        "/etc/fstab": (f"LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n", 0o644),
        # extlinux follows Debian's /vmlinuz links: the newest installed kernel boots.
        "/boot/extlinux/extlinux.conf": (
            "DEFAULT debian\nPROMPT 0\nTIMEOUT 1\nSERIAL 0 115200\n"
            "LABEL debian\n  LINUX /vmlinuz\n  INITRD /initrd.img\n"
            f"  APPEND root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8\n"
            "LABEL debian-old\n  LINUX /vmlinuz.old\n  INITRD /initrd.img.old\n"
            f"  APPEND root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8\n",
            0o644,
        ),
        "/etc/kernel-img.conf": ("do_symlinks = yes\nlink_in_boot = no\n", 0o644),
        "/etc/systemd/network/50-dhcp.network": (
            "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
            0o644,
        ),
        "/etc/hostname": ("autoglm-local\n", 0o644),
        "/etc/hosts": ("127.0.0.1 localhost\n127.0.1.1 autoglm-local\n", 0o644),
        "/etc/sudoers.d/vagrant": ("vagrant ALL=(ALL) NOPASSWD:ALL\n", 0o440),
        "/home/vagrant/.ssh/authorized_keys": (public_key, 0o600),
    }


# Written after the kernel is installed: the box's first initramfs is generic (MODULES=most,
# built in the chroot where `dep` cannot see a disk); rebuilds inside the VM (the nouveau
# blacklist, a kernel upgrade) then take only the VM's own drivers, much faster under TCG.
LATE_FILES: dict[str, tuple[str, int]] = {
    "/etc/initramfs-tools/conf.d/autoglm-modules.conf": ("MODULES=dep\n", 0o644),
}


def box_cache_key(
    public_key: str,
    base_key: str,
    packages: Sequence[str] = BOX_PACKAGES,
    week: str | None = None,
    version: int = BOX_VERSION,
    suite: str = SUITE,
) -> str:
    """Content key of the box: sandbox base key + packages + files + week + build version."""
    doc = {
        "suite": suite,
        "base": base_key,
        "packages": sorted(packages),
        "files": {k: list(v) for k, v in sorted(box_prep_files(public_key).items())},
        "late_files": {k: list(v) for k, v in sorted(LATE_FILES.items())},
        "disk_gib": DISK_GIB,
        "week": week or iso_week(),
        "version": version,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def debian_version(suite: str) -> str:
    return next(v for v, s in DEBIAN_SUITES.items() if s == suite)


def box_name(suite: str = SUITE) -> str:
    """`autoglm/debian12-local`, `autoglm/debian13-local`: one box per Debian release."""
    return f"autoglm/debian{debian_version(suite)}-local"


def box_metadata(disk_gib: int = DISK_GIB) -> dict[str, object]:
    """vagrant-libvirt's metadata.json for a single-disk qcow2 box."""
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": disk_gib}


# ----------------------------------------------------------------------------- building


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside `root` for maintainer scripts; services kept from starting."""
    points = [("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sys"]),
              ("dev", ["--bind", "/dev"]), ("dev/pts", ["--bind", "/dev/pts"])]  # fmt: skip
    mounted: list[Path] = []
    policy = root / "usr/sbin/policy-rc.d"
    try:
        for rel, how in points:
            target = root / rel
            target.mkdir(parents=True, exist_ok=True)
            _run(["mount", *how, str(target)])
            mounted.append(target)
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        yield
    finally:
        policy.unlink(missing_ok=True)
        for target in reversed(mounted):
            _run(["umount", "-l", str(target)], check=False)


def _chroot(root: Path, *argv: str, logfile: Path, timeout: float = 900) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "LC_ALL": "C.UTF-8"}  # fmt: skip
    with logfile.open("a") as out:
        out.write(f"\n$ chroot {' '.join(argv)}\n")
        out.flush()
        rc = subprocess.run(
            ["chroot", str(root), *argv], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, timeout=timeout,
        ).returncode  # fmt: skip
    if rc != 0:
        raise SandboxError(f"`chroot {' '.join(argv)}` exited {rc}; {logfile}:\n{_tail(logfile)}")


def _write_files(root: Path, files: dict[str, tuple[str, int]]) -> None:
    for rel, (content, mode) in files.items():
        target = root / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)


def _prepare_rootfs(root: Path, public_key: str, logfile: Path) -> None:
    with _chroot_mounts(root):
        _chroot(root, "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", "vagrant", logfile=logfile)
        # before the install: kernel-img.conf decides whether the kernel's postinst links /vmlinuz
        _write_files(root, box_prep_files(public_key))
        _chroot(root, "apt-get", "update", "-q", logfile=logfile)
        _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *BOX_PACKAGES,
                logfile=logfile)  # fmt: skip
        _write_files(root, LATE_FILES)
        _chroot(root, "chown", "-R", "vagrant:vagrant", "/home/vagrant", logfile=logfile)
        _chroot(root, "chmod", "700", "/home/vagrant/.ssh", logfile=logfile)
        _chroot(root, "systemctl", "enable", "systemd-networkd", "systemd-resolved",
                logfile=logfile)  # fmt: skip
        _chroot(root, "apt-get", "clean", logfile=logfile)
    # resolved's stub, as on a Debian cloud image (the package links it only when running)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")


def _write_disk(root: Path, raw: Path, logfile: Path) -> None:
    """Partitioned raw disk: ext4 made from `root` in place (no copy), extlinux installed."""
    size = DISK_GIB * 1024**3
    raw.unlink(missing_ok=True)
    with raw.open("wb") as fh:
        fh.truncate(size)
    _run(["parted", "-s", str(raw), "mklabel", "msdos", "mkpart", "primary", "ext4",
          f"{PART_OFFSET}B", "100%", "set", "1", "boot", "on"])  # fmt: skip
    fs_kib = (size - PART_OFFSET) // 1024
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(root),
          "-E", f"offset={PART_OFFSET}", str(raw), f"{fs_kib}k"])  # fmt: skip
    mnt = raw.with_name("mnt")
    mnt.mkdir(exist_ok=True)
    _run(["mount", "-o", f"loop,offset={PART_OFFSET}", str(raw), str(mnt)])
    try:
        with _chroot_mounts(mnt):
            _chroot(mnt, "extlinux", "--install", "/boot/extlinux", logfile=logfile)
    finally:
        _run(["umount", str(mnt)], check=False)
    mbr = (root / "usr/lib/EXTLINUX/mbr.bin").read_bytes()
    with raw.open("r+b") as fh:  # boot code only: the partition table after byte 440 stays
        fh.write(mbr[:440])


def _pack_box(raw: Path, out: Path, key: str) -> None:
    work = raw.parent
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "box.img")], timeout=900)
    (work / "metadata.json").write_text(json.dumps(box_metadata()) + "\n")
    (work / "autoglm-box-key").write_text(key + "\n")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w") as tar:
        for name in ("metadata.json", "autoglm-box-key", "box.img"):
            tar.add(work / name, arcname=name)
    os.replace(tmp, out)


def _remove_build_dir(work: Path) -> None:
    """rm -rf a build dir, never through a mount left in it (a bind of /dev would go too)."""
    for point in sorted(_mounts_under(work), key=len, reverse=True):
        _run(["umount", "-l", point], check=False)
    left = _mounts_under(work)
    if left:
        raise SandboxError(f"still mounted under {work}: {left}; unmount them, then retry")
    shutil.rmtree(work, ignore_errors=True)


def ensure_box(sandbox: Sandbox, cache_dir: Path = BOX_CACHE_DIR) -> Box:
    """The box file for the current key: from the cache, or built (about 2-4 min) and cached."""
    public_key = insecure_public_key()
    base = sandbox.ensure_base()
    base_key = (sandbox.state_dir / "base.key").read_text().strip()
    key = box_cache_key(public_key, base_key, suite=sandbox.suite)
    cache_dir = cache_dir / sandbox.suite  # a box per release; each prunes only its own
    entry = cache_dir / key
    box, kernel = entry / f"autoglm-debian{debian_version(sandbox.suite)}.box", entry / "vmlinuz"
    if box.is_file() and kernel.is_file():
        return Box(box, key, kernel, None)
    started = time.monotonic()
    with _flock(cache_dir / ".lock"):
        if box.is_file() and kernel.is_file():
            return Box(box, key, kernel, None)
        work = cache_dir / f".build-{key}"
        _remove_build_dir(work)
        (work / "root").parent.mkdir(parents=True)
        logfile = work / "build.log"
        log.info("building the Vagrant box %s from %s (a few minutes)", key, base)
        _run(["cp", "-a", f"{base}/.", str(work / "root")])
        _prepare_rootfs(work / "root", public_key, logfile)
        _write_disk(work / "root", work / "disk.raw", logfile)
        entry.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "root" / "vmlinuz", kernel)  # follows the link
        _pack_box(work / "disk.raw", box, key)
        _remove_build_dir(work)
        for old in cache_dir.iterdir():
            if old.is_dir() and old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)  # one box per release is enough
    return Box(box, key, kernel, time.monotonic() - started)


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))


def installed_box_key(name: str = BOX_NAME) -> str | None:
    """The key of the box `vagrant box add` installed under `name` (None: not installed)."""
    stamp = (
        vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-") / "0" / "libvirt"
        / "autoglm-box-key"
    )  # fmt: skip
    return stamp.read_text().strip() if stamp.is_file() else None


def add_box(box: Box, name: str = BOX_NAME, pool: str | None = None) -> bool:
    """`vagrant box add` unless that key is installed; drop libvirt's stale copy of the image."""
    if installed_box_key(name) == box.key:
        return False
    _run(["vagrant", "box", "add", "--force", "--name", name, str(box.path)], timeout=600)
    if pool:  # vagrant-libvirt uploads the image once per box name and reuses it after
        prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image"
        vols = _run(["virsh", "-c", "qemu:///system", "vol-list", pool], check=False).stdout
        for line in vols.splitlines()[2:]:
            vol = line.split()[0] if line.split() else ""
            if vol.startswith(prefix):
                _run(["virsh", "-c", "qemu:///system", "vol-delete", vol, pool], check=False)
    return True
