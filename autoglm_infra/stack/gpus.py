"""PCI device id -> GPU name, architecture and compute capability.

The ids live in autoglm_infra/stack/nvidia_stack.yaml (``gpus:``, names from pci.ids, compute
capability
from developer.nvidia.com/cuda-gpus). Preflight reads vendor/device ids from sysfs, which
works before any driver is installed. An id missing from the table is not an error: it is
reported as ``unknown architecture`` and the resolver skips the checks it cannot make.

Example::

    info = identify_gpu(GpuDevice("0x10de", "0x2330"), load_stack_table())
    info.name, info.architecture, info.compute_capability   # 'H100 SXM5 80GB', 'hopper', '9.0'
"""

from __future__ import annotations

from dataclasses import dataclass

from autoglm_infra.stack.facts_table import StackTable, normalize_pci_id, parse_version

NVIDIA_PCI_VENDOR = "0x10de"
UNKNOWN_ARCHITECTURE = "unknown"


@dataclass(frozen=True)
class GpuDevice:
    """One PCI display/3D device as read from sysfs (vendor and device ids, hex)."""

    pci_vendor: str  # "0x10de"
    pci_device: str  # "0x2330"


@dataclass(frozen=True)
class GpuInfo:
    """What the table knows about a device; ``known`` is False for ids not in the table."""

    pci_device: str
    name: str
    architecture: str
    compute_capability: str | None
    open_kernel_modules: str  # "unsupported" | "supported" | "required" | "unknown"
    known: bool
    verified: bool

    @property
    def label(self) -> str:
        """Human label for messages: 'H100 SXM5 80GB (0x2330, Hopper, compute capability 9.0)'."""
        if not self.known:
            return f"unknown NVIDIA GPU {self.pci_device} ({UNKNOWN_ARCHITECTURE} architecture)"
        return (
            f"{self.name} ({self.pci_device}, {self.architecture.capitalize()}, "
            f"compute capability {self.compute_capability})"
        )

    def compute_capability_tuple(self) -> tuple[int, ...] | None:
        return None if self.compute_capability is None else parse_version(self.compute_capability)


def is_nvidia(device: GpuDevice) -> bool:
    """True when the vendor id is NVIDIA's (0x10de); malformed ids are not NVIDIA."""
    try:
        return normalize_pci_id(device.pci_vendor) == NVIDIA_PCI_VENDOR
    except ValueError:
        return False


def identify_gpu(device: GpuDevice, table: StackTable) -> GpuInfo:
    """Look a device up in the table. Raises ValueError only for a malformed device id."""
    pci_device = normalize_pci_id(device.pci_device)
    model = table.gpu(pci_device)
    if model is None:
        return GpuInfo(
            pci_device=pci_device,
            name=f"unknown NVIDIA GPU {pci_device}",
            architecture=UNKNOWN_ARCHITECTURE,
            compute_capability=None,
            open_kernel_modules=UNKNOWN_ARCHITECTURE,
            known=False,
            verified=False,
        )
    arch = table.architecture(model.architecture)
    return GpuInfo(
        pci_device=pci_device,
        name=model.name,
        architecture=model.architecture,
        compute_capability=model.compute_capability,
        open_kernel_modules=arch.open_kernel_modules if arch else UNKNOWN_ARCHITECTURE,
        known=True,
        verified=model.verified,
    )
