"""What NVIDIA stack a host already has, and who installed it, from the GPU probe. Pure.

Read-only facts the NVIDIA stage decides on (autoglm_infra/stack/adopt.py): the loaded
driver's version and flavour (/proc/driver/nvidia/version: "Open Kernel Module" means the
open flavour), its owner (a dpkg package, NVIDIA's runfile with its /var/lib/nvidia/log
manifest and nvidia-uninstall, DKMS, or nothing we recognise), the CUDA toolkits and cuDNN
builds installed and the host's apt holds. Sources: ../shared/reference/
preinstalled-drivers.md §1 (runfile markers), §3 (NVRM line shapes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from autoglm_infra.stages.nvidia.gpu_checks import GpuProbe

OPEN, PROPRIETARY = "open", "proprietary"
# Owners of the driver: only DPKG is a package manager apt can replace it through.
DPKG, RUNFILE, DKMS, UNKNOWN, NONE = "dpkg", "runfile", "dkms", "unknown", "none"
# Packages that carry the driver itself (Ubuntu archive, CUDA repo, Debian).
_DRIVER_PACKAGE = re.compile(
    r"^(nvidia-driver-\d+.*|nvidia-open(-\d+)?|cuda-drivers(-\d+)?|libnvidia-compute-\d+.*"
    r"|nvidia-kernel-open-dkms|nvidia-open-kernel-dkms|nvidia-dkms-.*|nvidia-utils-\d+.*)$"
)
_VERSION = re.compile(r"\b(\d{3}\.\d+(?:\.\d+)?)\b")
# Packages whose presence means the toolkit X.Y is installed (full or in parts).
_TOOLKIT_PACKAGE = re.compile(r"^cuda-(?:toolkit|cudart|nvcc|libraries|runtime)-(\d+)-(\d+)$")
# cuDNN 9: libcudnn9-cuda-12; cuDNN 8 had one name, its CUDA in the version (8.9.7.29-1+cuda12.2)
_CUDNN_PACKAGE = re.compile(r"^libcudnn(\d+)(?:-cuda-(\d+))?$")
_CUDNN_CUDA_IN_VERSION = re.compile(r"\+cuda(\d+)\.")


def _cuda_in_version(version: str) -> str:
    match = _CUDNN_CUDA_IN_VERSION.search(version)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class InstalledStack:
    driver_version: str = ""  # what nvidia-smi / the loaded module report
    driver_flavour: str = ""  # open | proprietary | "" (not read)
    driver_healthy: bool = False  # nvidia-smi answered, and module = user space
    cuda_supported: str = ""  # the driver's own CUDA ("CUDA Version" of nvidia-smi)
    owner: str = NONE  # dpkg | runfile | dkms | unknown | none (no driver)
    owner_detail: str = ""  # the package, manifest or tool that shows it
    cuda_toolkits: tuple[tuple[str, str], ...] = ()  # (X.Y, evidence), newest first
    cudnn: tuple[tuple[str, str, str], ...] = ()  # (cuda major, version, package)
    held: frozenset[str] = frozenset()  # the host's own holds (apt-mark), not the stage's
    own_held: frozenset[str] = frozenset()  # what the NVIDIA stage holds (its record)
    packages: dict[str, str] = field(default_factory=dict)  # NVIDIA packages: name -> version

    @property
    def branch(self) -> int | None:
        major = self.driver_version.partition(".")[0]
        return int(major) if major.isdigit() else None

    @property
    def unmanaged(self) -> bool:
        """A driver is there, and no package manager apt can talk to owns it."""
        return bool(self.driver_version) and self.owner in (RUNFILE, DKMS, UNKNOWN)

    def describe_driver(self) -> str:
        if not self.driver_version:
            return "no NVIDIA driver"
        flavour = f", {self.driver_flavour} kernel module" if self.driver_flavour else ""
        return f"driver {self.driver_version}{flavour}, {self.describe_owner()}"

    def describe_owner(self) -> str:
        return {
            DPKG: f"installed by apt ({self.owner_detail})",
            RUNFILE: f"installed by NVIDIA's runfile ({self.owner_detail})",
            DKMS: f"built by DKMS outside apt ({self.owner_detail})",
            UNKNOWN: f"installed outside apt ({self.owner_detail})",
        }.get(self.owner, "no driver")


def nvrm_flavour(line: str) -> tuple[str, str]:
    """(version, flavour) of an NVRM line: "Open Kernel Module" means open."""
    found = _VERSION.search(line.partition("Module")[2] or line)
    version = found.group(1) if found else ""
    if not line.strip():
        return "", ""
    return version, OPEN if "Open Kernel Module" in line else PROPRIETARY


def _owner(probe: GpuProbe, driver: str) -> tuple[str, str]:
    if probe.smi_owner:
        version = probe.packages.get(probe.smi_owner, "")
        return DPKG, f"dpkg package {probe.smi_owner} {version} owns nvidia-smi".replace("  ", " ")
    packaged = sorted(n for n in probe.packages if _DRIVER_PACKAGE.match(n))
    if packaged:
        return DPKG, ", ".join(f"{n} {probe.packages[n]}" for n in packaged[:3])
    if not driver and not probe.smi_installed:
        return NONE, ""
    if probe.runfile_log or probe.uninstaller:
        what = [f"/var/lib/nvidia/log: {probe.runfile_log}"] if probe.runfile_log else []
        what += [f"{probe.uninstaller} present"] if probe.uninstaller else []
        return RUNFILE, "; ".join(what)
    if probe.dkms:
        return DKMS, f"dkms status: {probe.dkms}"
    where = probe.smi_path or "nvidia-smi"
    return UNKNOWN, f"no dpkg package owns {where} and no nvidia-* driver package is installed"


def installed_stack(probe: GpuProbe) -> InstalledStack:
    smi_versions = sorted({g.driver_version for g in probe.gpus})
    nvrm_version, flavour = nvrm_flavour(probe.nvrm)
    driver = (smi_versions[0] if len(smi_versions) == 1 else "") or probe.module_version
    driver = driver or nvrm_version
    loaded = probe.module_version or nvrm_version
    healthy = bool(smi_versions) and not probe.smi_error and smi_versions == [loaded or driver]
    owner, detail = _owner(probe, driver)
    toolkits: dict[str, str] = {}
    for name, version in sorted(probe.packages.items()):
        if match := _TOOLKIT_PACKAGE.match(name):
            toolkits.setdefault(f"{match.group(1)}.{match.group(2)}", f"{name} {version}")
    for path in probe.cuda_dirs:
        if re.fullmatch(r"\d+\.\d+", version := path.rpartition("cuda-")[2]):
            toolkits.setdefault(version, path)
    cudnn = tuple(
        (cuda, version, name)
        for name, version in sorted(probe.packages.items())
        if (m := _CUDNN_PACKAGE.match(name)) and (cuda := m.group(2) or _cuda_in_version(version))
    )
    newest_first = sorted(
        toolkits.items(), key=lambda kv: tuple(int(x) for x in kv[0].split(".")), reverse=True
    )
    return InstalledStack(
        driver_version=driver,
        driver_flavour=flavour,
        driver_healthy=healthy,
        cuda_supported=probe.cuda_supported,
        owner=owner,
        owner_detail=detail,
        cuda_toolkits=tuple(newest_first),
        cudnn=cudnn,
        held=probe.held - probe.own_held,  # the host's holds; the stage's own are not
        own_held=probe.own_held,
        packages=dict(probe.packages),
    )
