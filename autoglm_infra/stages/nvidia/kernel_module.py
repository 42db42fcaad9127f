"""The NVIDIA kernel module as the running kernel sees it: built for it, loaded, and why not.

Read from `uname -r`, `modinfo -k <running kernel> nvidia` (the module file that `modprobe`
would load, whichever route installed it), `dkms status nvidia` and, only when the module
is not loaded, the kernel log. Pure: no pyinfra import.

`dkms status` prints one line per module, version and kernel. dkms 3.x (Debian 12,
Ubuntu 24.04) writes `nvidia/550.54.15, 6.1.0-57-cloud-amd64, x86_64: installed`
(github.com/ni/meta-nilrt/pull/455); dkms 2.x (Ubuntu 22.04) writes
`nvidia, 550.54.15, 6.1.0-57-cloud-amd64, x86_64: installed`
(github.com/realsenseai/librealsense/issues/4763). A source that is only added has no
kernel: `nvidia/550.54.15: added`. States are added, built, installed, and a note in
parentheses may follow ("installed (WARNING! Diff between built and installed module!)").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoglm_infra.common.checks import Check

# Secure Boot / lockdown refusals in the kernel log (kernel/module/signing.c, lockdown LSM).
# They name no module: a locked-down Debian 12 kernel refusing DKMS's nvidia.ko logs only
# "Loading of module with unavailable key is rejected" (read in a Secure Boot VM,
# `make vm-secureboot`), so the probe keeps them beside the NVRM lines.
_SIGNATURE_REFUSALS = (
    "key was rejected",
    "lockdown",
    "unsigned module",
    "required key not",
    "with unavailable key",
)
_KERNEL_LOG_PATTERN = "nvrm|nvidia|module with unavailable key|unsigned module loading"


@dataclass(frozen=True)
class DkmsEntry:
    module: str
    version: str
    kernel: str  # "" for a source that is only added
    state: str  # added | built | installed (anything else is kept as printed)
    note: str = ""  # dkms's words in parentheses after the state


@dataclass(frozen=True)
class ModuleState:
    kernel: str = ""  # `uname -r`; "" when the probe did not get that far
    modinfo_read: bool = False  # modinfo exists on the host, so an empty answer means "none"
    file: str = ""  # the nvidia module file for the running kernel
    file_version: str = ""
    signer: str = ""  # modinfo's signer: "" for an unsigned module
    dkms: tuple[DkmsEntry, ...] = ()
    kernel_log: tuple[str, ...] = ()  # the last NVRM/nvidia kernel messages (not loaded only)


def module_probe_lines() -> list[str]:
    """Shell lines for the GPU probe: the running kernel's nvidia module, DKMS, kernel log."""
    return [
        "k=$(uname -r) && echo kernel=$k",
        "command -v modinfo >/dev/null 2>&1 && echo modinfo=present"
        ' && modinfo -k "$k" nvidia 2>/dev/null'
        " | sed -n 's/^\\(filename\\|version\\|signer\\):[[:space:]]*/modinfo_\\1=/p'",
        "command -v dkms >/dev/null 2>&1 && dkms status nvidia 2>/dev/null | sed 's/^/dkms=/'",
        # why a module is not loaded is in the kernel log (dmesg needs root; journald's
        # copy when dmesg is refused); only read when it is not loaded
        "[ -d /sys/module/nvidia ] || { dmesg 2>/dev/null || journalctl -k -b -q --no-pager"
        " -o cat 2>/dev/null; }"
        f" | grep -i -E '{_KERNEL_LOG_PATTERN}' | tail -n 3"
        " | sed 's/^\\[[^]]*\\] *//; s/^/klog=/'",
    ]


def parse_dkms_line(line: str) -> DkmsEntry | None:
    """One `dkms status` line, either dkms generation's shape; None for anything else."""
    head, sep, state = line.strip().rpartition(": ")
    if not sep:
        return None
    state, _, note = state.partition(" (")
    parts = [p.strip() for p in head.split(",")]
    if "/" in parts[0]:  # dkms 3.x: module/version[, kernel, arch]
        module, _, version = parts[0].partition("/")
        rest = parts[1:]
    elif len(parts) >= 2:  # dkms 2.x: module, version[, kernel, arch]
        module, version, rest = parts[0], parts[1], parts[2:]
    else:
        return None
    kernel = rest[0] if rest else ""
    return DkmsEntry(module, version, kernel, state.strip(), note.rstrip(")").strip())


def parse_module_state(
    values: dict[str, str], dkms: Sequence[str], klog: Sequence[str]
) -> ModuleState:
    entries = [e for e in (parse_dkms_line(line) for line in dkms) if e]
    return ModuleState(
        kernel=values.get("kernel", ""),
        modinfo_read=values.get("modinfo") == "present",
        file=values.get("modinfo_filename", ""),
        file_version=values.get("modinfo_version", ""),
        signer=values.get("modinfo_signer", ""),
        dkms=tuple(entries),
        kernel_log=tuple(line for line in klog if line),
    )


def module_origin(path: str) -> str:
    """Who put the module file there, from its path (preinstalled-drivers.md, section 1-2)."""
    if "/updates/dkms/" in path:
        return "built by DKMS"
    if "/kernel/nvidia-" in path:
        return "Ubuntu's precompiled, signed module"
    if "/kernel/drivers/video/" in path:
        return "NVIDIA's runfile, without DKMS"
    return "origin not recognised"


def module_checks(
    state: ModuleState, loaded_version: str, gpu_present: bool, driver_present: bool
) -> list[Check]:
    """Two rows: the module for the running kernel, and whether it is loaded (and why not)."""
    if not state.kernel:
        why = "the probe did not report the running kernel: not read"
        return [Check("module built", "skip", why), Check("module loaded", "skip", why)]
    return [
        _built_check(state, loaded_version, gpu_present, driver_present),
        _loaded_check(state, loaded_version, gpu_present),
    ]


def _built_check(
    state: ModuleState, loaded_version: str, gpu_present: bool, driver_present: bool
) -> Check:
    name, kernel = "module built", state.kernel
    here = [e for e in state.dkms if e.kernel == kernel]
    dkms_here = "; DKMS: " + ", ".join(f"{e.version} {e.state}" for e in here) if here else ""
    if state.file:
        signed = f", signed by {state.signer}" if state.signer else ", unsigned"
        return Check(
            name,
            "ok",
            f"nvidia {state.file_version or '(no version)'} for the running kernel {kernel}: "
            f"{state.file} ({module_origin(state.file)}{signed}){dkms_here}",
        )
    if not state.modinfo_read:
        return Check(
            name,
            "skip",
            f"modinfo (kmod) is not installed: the module files for {kernel} were not read",
        )
    unfinished = [e for e in here if e.state != "installed"]
    if unfinished:
        e = unfinished[0]
        return Check(
            name,
            "fail",
            f"DKMS has nvidia {e.version} for the running kernel {kernel} only {e.state}",
            f"`dkms install nvidia/{e.version} -k {kernel}` and read its build log "
            f"(/var/lib/dkms/nvidia/{e.version}/build/make.log)",
        )
    others = sorted({e.kernel for e in state.dkms if e.kernel and e.kernel != kernel})
    if state.dkms:
        versions = ", ".join(sorted({e.version for e in state.dkms}))
        elsewhere = f"for {', '.join(others)}" if others else "(source added, never built)"
        boot = f", or boot a kernel it was built for ({', '.join(others)})" if others else ""
        return Check(
            name,
            "fail",
            f"no nvidia module for the running kernel {kernel}: DKMS has nvidia {versions} "
            f"{elsewhere}",
            f"install linux-headers-{kernel} and run `dkms autoinstall -k {kernel}` (a converge "
            f"of deploys/nvidia.py does both){boot}",
        )
    if loaded_version or (gpu_present and driver_present):
        return Check(
            name,
            "fail",
            f"no nvidia module file for the running kernel {kernel} (modinfo finds none, "
            "DKMS lists none)"
            + (f", yet nvidia {loaded_version} is loaded" if loaded_version else ""),
            "converge deploys/nvidia.py (it installs the DKMS driver package), then reboot",
        )
    if gpu_present:
        return Check(
            name,
            "fail",
            f"no NVIDIA driver: no nvidia module for the running kernel {kernel}",
            "converge deploys/nvidia.py",
        )
    return Check(name, "skip", f"no nvidia module for {kernel} and no GPU: nothing to check")


def _loaded_check(state: ModuleState, loaded_version: str, gpu_present: bool) -> Check:
    name = "module loaded"
    if loaded_version:
        if state.file_version and state.file_version != loaded_version:
            return Check(
                name,
                "fail",
                f"nvidia {loaded_version} is loaded, but the module on disk for "
                f"{state.kernel} is {state.file_version}",
                "reboot so the installed module is loaded",
            )
        return Check(name, "ok", f"nvidia {loaded_version} loaded")
    if not state.file:
        return Check(name, "skip", "not loaded; no module to load (see module built)")
    log = "; ".join(state.kernel_log)
    said = f"; kernel log: {log}" if log else "; the kernel log says nothing about nvidia"
    if not gpu_present:
        return Check(
            name,
            "skip",
            "not loaded: there is no NVIDIA GPU for it to drive (udev loads it for one)" + said,
        )
    if any(word in log.lower() for word in _SIGNATURE_REFUSALS):
        fix = (
            "Secure Boot refuses the module: enroll the DKMS signing key "
            "(`mokutil --import /var/lib/dkms/mok.pub`, reboot, confirm), or disable Secure Boot"
        )
    elif "no nvidia gpu" in log.lower() or "probe" in log.lower():
        fix = "the driver does not bind this GPU: check the branch supports it and `dmesg`"
    else:
        fix = "`modprobe nvidia` and read its error, then `dmesg | grep -i -e nvrm -e nvidia`"
    return Check(name, "fail", "not loaded although a GPU is present" + said, fix)
