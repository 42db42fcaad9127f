"""GPU acceptance checks: what nvidia-smi, the kernel and dpkg say against the stack plan.

One probe script reads everything (no python on the host needed); `evaluate_gpu` turns it
into checks with evidence and a fix. Pure: no pyinfra import. The probe's nvidia-smi
branch can only run on a real GPU host; its parser is tested with recorded output.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from packaging.version import InvalidVersion, Version

from autoglm_infra.common.checks import Check
from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.stages.nvidia.files import HELD_STATE, REBOOT_REQUIRED
from autoglm_infra.stages.nvidia.kernel_module import (
    ModuleState,
    module_checks,
    module_probe_lines,
    parse_module_state,
)

# Open-AutoGLM recommends 24 GB or more of GPU memory for the 9B model.
RECOMMENDED_VRAM_MIB = 24 * 1024
SMI_QUERY = "index,pci.bus_id,name,driver_version,persistence_mode,memory.total"
# installed packages that mean "a driver is meant to be here" (its kernel module with it)
_DRIVER_NAMES = ("nvidia-driver", "nvidia-kernel", "nvidia-open", "nvidia-dkms", "cuda-drivers")
# The driver's CUDA from the plain `nvidia-smi` banner: "CUDA Version: 13.0" up to R595,
# "CUDA UMD Version: 13.3" (next to "KMD Version:") from R610 on. POSIX BRE, for any sed.
CUDA_VERSION_SED = r"s/.*CUDA \(UMD \)\{0,1\}Version: *\([0-9][0-9.]*\).*/cuda=\2/p"


@dataclass(frozen=True)
class SmiGpu:
    index: str
    bus_id: str
    name: str
    driver_version: str
    persistence: str  # Enabled | Disabled
    memory_mib: int


@dataclass(frozen=True)
class GpuProbe:
    read: bool = False  # the probe ran (its first line); an empty probe read nothing
    smi_installed: bool = False
    smi_error: str = ""  # first line nvidia-smi printed when it failed
    gpus: tuple[SmiGpu, ...] = ()
    cuda_supported: str = ""  # nvidia-smi's "CUDA [UMD] Version": the driver's maximum
    module_version: str = ""
    uvm_loaded: bool = False
    packages: dict[str, str] = field(default_factory=dict)  # name -> installed version
    held: frozenset[str] = frozenset()
    own_held: frozenset[str] = frozenset()  # the NVIDIA stage's own holds (its state file)
    reboot_required: str = ""
    # Who installed the driver (autoglm_infra/stack/installed.py reads these).
    nvrm: str = ""  # first line of /proc/driver/nvidia/version
    smi_path: str = ""
    smi_owner: str = ""  # dpkg package owning nvidia-smi ("" when none)
    runfile_log: str = ""  # first line of /var/lib/nvidia/log (NVIDIA's runfile manifest)
    uninstaller: str = ""  # path of nvidia-uninstall
    dkms: str = ""  # first `dkms status nvidia` line
    cuda_dirs: tuple[str, ...] = ()  # /usr/local/cuda-X.Y
    kernel_module: ModuleState = field(default_factory=ModuleState)


def gpu_probe_script(package_patterns: Sequence[str]) -> str:
    patterns = " ".join(shlex.quote(p) for p in package_patterns)
    return "\n".join(
        [
            "export LC_ALL=C",
            "echo probe=gpu",
            "if command -v nvidia-smi >/dev/null 2>&1; then echo smi=installed",
            f"  if out=$(nvidia-smi --query-gpu={SMI_QUERY} --format=csv,noheader,nounits 2>&1)",
            '  then printf "%s\\n" "$out" | sed "s/^/gpu=/"',
            f"    nvidia-smi 2>/dev/null | sed -n '{CUDA_VERSION_SED}'",
            '  else printf "%s\\n" "$out" | head -n1 | sed "s/^/smi_error=/"; fi',
            "fi",
            "[ -r /sys/module/nvidia/version ] && echo module=$(cat /sys/module/nvidia/version)",
            "[ -d /sys/module/nvidia_uvm ] && echo uvm=loaded",
            f"dpkg-query -W -f='pkg=${{Package}} ${{Version}} ${{db:Status-Abbrev}}\\n' {patterns}"
            " 2>/dev/null | awk '$3 ~ /^.i/ {print $1, $2}'",
            # the holds `apt-mark showhold` lists, from dpkg's own database: apt-mark would
            # build /var/cache/apt/pkgcache.bin, and a read (or --dry) must write nothing
            "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' 2>/dev/null"
            " | awk '$1 ~ /^h/ {print \"held=\" $2}'",
            f"[ -r {HELD_STATE} ] && tr -s ' ' '\\n' < {HELD_STATE} | sed '/^$/d; s/^/own_held=/'",
            f"[ -r {REBOOT_REQUIRED} ] && sed 's/^/reboot=/' {REBOOT_REQUIRED}",
            # who installed the driver: dpkg, NVIDIA's runfile (its manifest and
            # nvidia-uninstall), DKMS; and toolkits installed outside dpkg
            "[ -r /proc/driver/nvidia/version ] && head -n1 /proc/driver/nvidia/version"
            " | sed 's/^/nvrm=/'",
            "p=$(command -v nvidia-smi 2>/dev/null) && echo smi_path=$p"
            ' && dpkg -S "$(readlink -f $p)" "$p" 2>/dev/null | head -n1 | cut -d: -f1'
            " | sed 's/^/smi_owner=/'",
            "[ -r /var/lib/nvidia/log ] && head -n1 /var/lib/nvidia/log | sed 's/^/runfile_log=/'",
            "p=$(command -v nvidia-uninstall 2>/dev/null) && echo uninstaller=$p",
            *module_probe_lines(),
            "for d in /usr/local/cuda-[0-9]*; do [ -d $d ] && echo cuda_dir=$d; done",
            "true",
        ]
    )


def _int(text: str) -> int:
    try:
        return int(float(text.strip()))
    except ValueError:
        return 0


def parse_gpu_probe(lines: Sequence[str]) -> GpuProbe:
    gpus, packages, held, own_held, cuda_dirs = [], {}, set(), set(), []
    dkms: list[str] = []
    klog: list[str] = []
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key == "gpu":
            cols = [c.strip() for c in value.split(",")]
            if len(cols) == 6:
                gpus.append(SmiGpu(cols[0], cols[1], cols[2], cols[3], cols[4], _int(cols[5])))
        elif key == "pkg":
            name, _, version = value.partition(" ")
            packages[name] = version.strip()
        elif key == "held":
            held.add(value.strip())
        elif key == "own_held":
            own_held.add(value.strip())
        elif key == "cuda_dir":
            cuda_dirs.append(value.strip())
        elif key == "klog":
            klog.append(value.strip())
        else:
            if key == "dkms":
                dkms.append(value.strip())
            values.setdefault(key, value.strip())
    return GpuProbe(
        read=bool(values or gpus or packages or held),  # any line: the probe ran
        smi_installed=values.get("smi") == "installed",
        smi_error=values.get("smi_error", ""),
        gpus=tuple(gpus),
        cuda_supported=values.get("cuda", ""),
        module_version=values.get("module", ""),
        uvm_loaded=values.get("uvm") == "loaded",
        packages=packages,
        held=frozenset(held),
        own_held=frozenset(own_held),
        reboot_required=values.get("reboot", ""),
        nvrm=values.get("nvrm", ""),
        smi_path=values.get("smi_path", ""),
        smi_owner=values.get("smi_owner", ""),
        runfile_log=values.get("runfile_log", ""),
        uninstaller=values.get("uninstaller", ""),
        dkms=values.get("dkms", ""),
        cuda_dirs=tuple(cuda_dirs),
        kernel_module=parse_module_state(values, dkms, klog),
    )


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _smi_fix(error: str) -> str:
    if "version mismatch" in error.lower():
        return "the driver was upgraded under the loaded module: reboot the host"
    if "couldn't communicate" in error.lower():
        return "the kernel module is not loaded: check `dmesg | grep -i nvidia`, Secure Boot"
    return "check `dmesg | grep -i nvidia` and re-run deploys/nvidia.py"


def evaluate_gpu(
    profile: HostProfile,
    probe: GpuProbe,
    driver_version: str,
    cuda_version: str,
    packages: Sequence[tuple[str, str]],
) -> list[Check]:
    """Every check of the GPU acceptance deploy, in the order an operator reads them."""
    if not probe.read:
        return [
            Check(
                "gpu probe",
                "fail",
                "the GPU probe printed nothing: nvidia-smi, modules and packages not read",
                "run again with -vv to see the probe's output and error",
            )
        ]
    checks = [_packages_check(probe, packages)]
    if probe.reboot_required:
        checks.append(
            Check("reboot", "fail", f"reboot required: {probe.reboot_required}", "reboot the host")
        )
    driver_present = probe.smi_installed or any(n.startswith(_DRIVER_NAMES) for n in probe.packages)
    checks += module_checks(
        probe.kernel_module, probe.module_version, bool(profile.gpus), driver_present
    )
    if not profile.gpus:
        checks.append(
            Check(
                "gpu present",
                "fail",
                "no PCI display device with vendor 0x10de in sysfs",
                "attach a GPU (lspci -d 10de:), or this is not a GPU host",
            )
        )
        skipped = "no NVIDIA GPU: not checked (nothing to check without one)"
        names = ("nvidia-smi", "driver version", "module = user space", "CUDA supported")
        return checks + [Check(n, "skip", skipped) for n in names]
    ids = ", ".join(f"{g.address} {g.device_id}" for g in profile.gpus)
    checks.append(Check("gpu present", "ok", f"{len(profile.gpus)} in sysfs: {ids}"))
    if not probe.smi_installed:
        checks.append(
            Check("nvidia-smi", "fail", "not installed", "converge deploys/nvidia.py first")
        )
        return checks
    if probe.smi_error or not probe.gpus:
        error = probe.smi_error or "answered with no GPU rows"
        checks.append(Check("nvidia-smi", "fail", error, _smi_fix(error)))
        return checks
    if len(probe.gpus) != len(profile.gpus):
        checks.append(
            Check(
                "nvidia-smi",
                "fail",
                f"sees {len(probe.gpus)} of {len(profile.gpus)} GPUs in sysfs",
                "look for Xid / fallen-off-the-bus errors in `dmesg` and `nvidia-smi -q`",
            )
        )
    else:
        models = sorted({g.name for g in probe.gpus})
        checks.append(Check("nvidia-smi", "ok", f"{len(probe.gpus)} GPU(s): {', '.join(models)}"))
    checks += _driver_checks(probe, driver_version, cuda_version)
    checks += _runtime_checks(probe)
    return checks


def _packages_check(probe: GpuProbe, packages: Sequence[tuple[str, str]]) -> Check:
    if not packages:
        return Check("packages", "ok", "none to install or hold: every component is kept")
    wrong = [
        f"{n} {probe.packages.get(n, 'missing')} (plan {v})"
        for n, v in packages
        if probe.packages.get(n) != v
    ]
    unheld = [n for n, v in packages if probe.packages.get(n) == v and n not in probe.held]
    if wrong:
        return Check(
            "packages", "fail", "; ".join(wrong[:4]), "converge deploys/nvidia.py (it pins them)"
        )
    if unheld:
        return Check(
            "packages",
            "warn",
            f"not held: {', '.join(unheld[:4])}",
            "converge deploys/nvidia.py (it holds them against unattended upgrades)",
        )
    return Check("packages", "ok", f"{len(packages)} planned packages at their versions, held")


def _driver_checks(probe: GpuProbe, driver_version: str, cuda_version: str) -> list[Check]:
    checks = []
    drivers = sorted({g.driver_version for g in probe.gpus})
    if drivers == [driver_version]:
        checks.append(Check("driver version", "ok", f"{driver_version} (plan)"))
    else:
        checks.append(
            Check(
                "driver version",
                "fail",
                f"nvidia-smi reports {', '.join(drivers)}, plan is {driver_version}",
                "converge deploys/nvidia.py, then reboot if it says so",
            )
        )
    if probe.module_version and drivers == [probe.module_version]:
        checks.append(Check("module = user space", "ok", f"kernel module {probe.module_version}"))
    else:
        checks.append(
            Check(
                "module = user space",
                "fail",
                f"kernel module {probe.module_version or 'not loaded'}, "
                f"user space {', '.join(drivers)}",
                "reboot so the installed module is loaded",
            )
        )
    supported, wanted = _version(probe.cuda_supported), _version(cuda_version)
    if supported and wanted and supported >= wanted:
        checks.append(
            Check("CUDA supported", "ok", f"driver supports CUDA <= {supported}, plan {wanted}")
        )
    else:
        checks.append(
            Check(
                "CUDA supported",
                "fail",
                f"driver supports CUDA {probe.cuda_supported or '?'}, plan needs {cuda_version}",
                "use a newer nvidia_driver_branch or an older cuda_version",
            )
        )
    return checks


def _runtime_checks(probe: GpuProbe) -> list[Check]:
    off = [g.index for g in probe.gpus if g.persistence.lower() != "enabled"]
    small = [
        f"GPU {g.index}: {g.memory_mib} MiB"
        for g in probe.gpus
        if g.memory_mib < RECOMMENDED_VRAM_MIB
    ]
    return [
        Check(
            "persistence mode",
            "warn" if off else "ok",
            f"off on GPU {', '.join(off)}" if off else "enabled on every GPU",
            "systemctl enable --now nvidia-persistenced",
        ),
        Check(
            "nvidia_uvm loaded",
            "ok" if probe.uvm_loaded else "warn",
            "loaded" if probe.uvm_loaded else "not loaded: CUDA would need setuid nvidia-modprobe",
            "modprobe nvidia_uvm (deploys/nvidia.py loads it at boot)",
        ),
        Check(
            "GPU memory",
            "warn" if small else "ok",
            "; ".join(small) if small else f"every GPU >= {RECOMMENDED_VRAM_MIB // 1024} GiB",
            "the 9B model wants 24 GB+: use tensor_parallel_size > 1 or a larger GPU",
        ),
    ]
