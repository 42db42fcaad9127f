"""What a host is, read in ONE remote command: OS, CPU, RAM, disk, NVIDIA GPUs, driver.

The probe is a POSIX shell script (no python needed on the host) that prints key=value
lines; `parse_host_profile` turns them into a typed profile. Pure: no pyinfra import.
GPUs are found through sysfs (PCI vendor 0x10de, display class 0x03xxxx), which works
before any driver is installed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# EFI_GLOBAL_VARIABLE's GUID (UEFI spec 2.10, section 3.3); read in a Secure Boot VM
# (`make vm-secureboot`), where a wrong GUID had made every host "unknown".
_EFI_SECURE_BOOT = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
# Where DKMS (Debian) and shim-signed (Ubuntu) keep the key they sign modules with.
MOK_KEYS = ("/var/lib/dkms/mok.pub", "/var/lib/shim-signed/mok/MOK.der")


@dataclass(frozen=True)
class PciGpu:
    address: str  # 0000:65:00.0
    device_id: str  # 0x2330
    pci_class: str  # 0x030200


@dataclass(frozen=True)
class HostProfile:
    os_id: str = ""
    os_version: str = ""
    arch: str = ""
    kernel: str = ""
    cpus: int = 0
    mem_kib: int = 0
    disk_path: str = ""
    disk_free_kib: int = 0
    gpus: tuple[PciGpu, ...] = ()
    nvidia_module_version: str = ""  # loaded kernel module (/sys/module/nvidia/version)
    nouveau_loaded: bool = False  # only a reboot unloads it once it drives a GPU
    kernel_headers: bool = False  # /lib/modules/<running kernel>/build: DKMS can build for it
    dkms: bool = False  # /usr/sbin/dkms (dkms 2.x, 3.x) or /usr/bin/dkms
    # The kernel enforces AppArmor (securityfs and parameters/enabled Y, runc's own test):
    # Docker confines containers with docker-default only where apparmor_parser exists.
    apparmor: bool = False
    secure_boot: str = "unknown"  # on | off (EFI variable, or no EFI at all) | unknown
    efi: bool | None = None  # booted through EFI; None: not read
    module_signing_key: str = "none"  # enrolled | not-enrolled | none (no DKMS/MOK key)
    systemd_booted: bool = False
    virtualization: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def read(self) -> bool:
        """The probe ran: it always prints os_id= and arch=."""
        return bool(self.arch)

    @property
    def mem_gib(self) -> float:
        return self.mem_kib / 1024 / 1024

    @property
    def disk_free_gib(self) -> float:
        return self.disk_free_kib / 1024 / 1024


def profile_script(disk_path: str) -> str:
    """Shell script whose output `parse_host_profile` reads; `disk_path` may not exist yet."""
    path = shlex.quote(disk_path)
    return "; ".join(
        [
            "export LC_ALL=C",
            "[ -r /etc/os-release ] && . /etc/os-release",
            'echo "os_id=${ID:-}"',
            'echo "os_version=${VERSION_ID:-}"',
            'echo "arch=$(uname -m)"',
            'k=$(uname -r); echo "kernel=$k"',
            'echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"',
            "awk '/^MemTotal:/{print \"mem_kib=\" $2}' /proc/meminfo",
            # nearest existing parent of the model directory: that is where it will live
            f'p={path}; while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname "$p"); done',
            'echo "disk_path=$p"',
            'df -Pk "$p" | awk \'NR==2{print "disk_free_kib=" $4}\'',
            # `read`, not `cat`: a GPU server has hundreds of PCI functions, a fork each
            "for d in /sys/bus/pci/devices/*; do"
            ' v=; read -r v < "$d/vendor" 2>/dev/null; [ "$v" = 0x10de ] || continue;'
            ' read -r c < "$d/class"; case $c in 0x03*)'
            ' read -r i < "$d/device"; echo "gpu=${d##*/} $i $c";; esac; done',
            "[ -r /sys/module/nvidia/version ]"
            ' && echo "nvidia_module=$(cat /sys/module/nvidia/version)"',
            "[ -d /sys/module/nouveau ] && echo nouveau=loaded",
            '[ -e "/lib/modules/$k/build" ] && echo kernel_headers=yes',
            "{ [ -x /usr/sbin/dkms ] || [ -x /usr/bin/dkms ]; } && echo dkms=yes",
            "a=/sys/module/apparmor/parameters/enabled;"
            ' [ -d /sys/kernel/security/apparmor ] && [ -r $a ] && read -r a < $a && [ "$a" = Y ]'
            " && echo apparmor=yes",
            f"if [ -r {_EFI_SECURE_BOOT} ]; then"
            f" sb=$(od -An -tu1 {_EFI_SECURE_BOOT} | awk '{{print $NF}}');"
            ' [ "$sb" = 1 ] && echo secure_boot=on || echo secure_boot=off; fi',
            # Legacy (BIOS) boot has no Secure Boot at all: that is "off", not "unknown".
            "[ -d /sys/firmware/efi ] && echo efi=yes || echo efi=no",
            # Only asked when Secure Boot is on: mokutil is slow-ish and often missing.
            'if [ "${sb:-0}" = 1 ]; then for k in ' + " ".join(MOK_KEYS) + "; do"
            ' [ -r "$k" ] || continue;'
            ' if mokutil --test-key "$k" 2>/dev/null | grep -q "already enrolled";'
            " then echo mok=enrolled; break; else echo mok=not-enrolled; fi; done; fi",
            "[ -d /run/systemd/system ] && echo systemd=yes",
            'echo "virt=$(systemd-detect-virt 2>/dev/null || true)"',
            "true",
        ]
    )


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


def parse_host_profile(lines: list[str]) -> HostProfile:
    values: dict[str, str] = {}
    gpus: list[PciGpu] = []
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key == "gpu":
            parts = value.split()
            if len(parts) == 3:
                gpus.append(PciGpu(parts[0], parts[1].lower(), parts[2].lower()))
            continue
        values[key] = value.strip()
    known = {
        "os_id",
        "os_version",
        "arch",
        "kernel",
        "cpus",
        "mem_kib",
        "disk_path",
        "disk_free_kib",
        "nvidia_module",
        "nouveau",
        "kernel_headers",
        "dkms",
        "apparmor",
        "secure_boot",
        "mok",
        "systemd",
        "virt",
        "efi",
    }
    efi = {"yes": True, "no": False}.get(values.get("efi", ""))
    secure_boot = values.get("secure_boot") or ("off" if efi is False else "unknown")
    return HostProfile(
        os_id=values.get("os_id", ""),
        os_version=values.get("os_version", ""),
        arch=values.get("arch", ""),
        kernel=values.get("kernel", ""),
        cpus=_int(values.get("cpus", "0")),
        mem_kib=_int(values.get("mem_kib", "0")),
        disk_path=values.get("disk_path", ""),
        disk_free_kib=_int(values.get("disk_free_kib", "0")),
        gpus=tuple(gpus),
        nvidia_module_version=values.get("nvidia_module", ""),
        nouveau_loaded=values.get("nouveau") == "loaded",
        kernel_headers=values.get("kernel_headers") == "yes",
        dkms=values.get("dkms") == "yes",
        apparmor=values.get("apparmor") == "yes",
        secure_boot=secure_boot,
        efi=efi,
        module_signing_key=values.get("mok", "none"),
        systemd_booted=values.get("systemd") == "yes",
        virtualization=values.get("virt", ""),
        extra={k: v for k, v in values.items() if k not in known},
    )
