"""Exact content of every file the NVIDIA stage manages on a host. Pure."""

from __future__ import annotations

from autoglm_infra.common.apt_source import deb822_source
from autoglm_infra.common.managed_file import ManagedFile

KEYRING = "/etc/apt/keyrings/autoglm-nvidia-cuda.gpg"
SOURCE = "/etc/apt/sources.list.d/autoglm-nvidia-cuda.sources"
UNATTENDED_BLACKLIST = "/etc/apt/apt.conf.d/51autoglm-nvidia-no-unattended-upgrades"
NOUVEAU_BLACKLIST = "/etc/modprobe.d/autoglm-blacklist-nouveau.conf"
UVM_AT_BOOT = "/etc/modules-load.d/autoglm-nvidia-uvm.conf"
HELD_STATE = "/var/lib/autoglm/nvidia-held-packages"
# Pins the whole driver closure, the toolkit and cuDNN to the plan (see closure_preferences).
CLOSURE_PIN = "/etc/apt/preferences.d/autoglm-nvidia-pin"
# Above the 1000 of NVIDIA's own nvidia-driver-pinning-* files, so another branch's pinning
# package left on the host cannot outvote the plan; > 1000 also allows the downgrade back.
PIN_PRIORITY = 1001
REBOOT_REQUIRED = "/var/lib/autoglm/reboot-required"
# What unattended-upgrades must never touch: a driver swapped under a running service
# is the classic "Driver/library version mismatch".
UNATTENDED_PATTERNS = ("nvidia-", "libnvidia-", "cuda-", "libcuda", "cudnn", "libcudnn")
# What the snapshot lists: every driver binary DRIVER_PACKAGES_REGEX names (so a stale one
# is seen and moved with the driver), CUDA and cuDNN.
PACKAGE_PATTERNS = (
    "nvidia-*", "libnvidia-*", "cuda-*", "cudnn*", "libcudnn*", "libcuda*", "firmware-nvidia-*",
    "xserver-xorg-video-nvidia*", "libnvcuvid*", "libnvoptix*", "libxnvctrl*",
    "libegl-nvidia*", "libgl1-nvidia*", "libgles-nvidia*", "libglx-nvidia*",
)  # fmt: skip
# Every binary built from NVIDIA's driver sources, Debian and Ubuntu names (apt regex).
DRIVER_PACKAGES_REGEX = (
    "/^(nvidia-|libnvidia-|libcuda|cuda-drivers|firmware-nvidia-|xserver-xorg-video-nvidia"
    "|libnvcuvid|libnvoptix|libxnvctrl|libegl-nvidia|libgl1-nvidia|libgles-nvidia"
    "|libglx-nvidia)/"
)


def key_file_name(fingerprint: str) -> str:
    """NVIDIA publishes its CUDA repo key as <last 8 hex digits, lower case>.pub."""
    return f"{fingerprint[-8:].lower()}.pub"


def unattended_blacklist() -> str:
    entries = "\n".join(f'    "{p}";' for p in UNATTENDED_PATTERNS)
    return (
        "// Managed by autoglm-infra: driver, CUDA and cuDNN change only through the deploy.\n"
        f"Unattended-Upgrade::Package-Blacklist {{\n{entries}\n}};\n"
    )


def nouveau_blacklist() -> str:
    return "# Managed by autoglm-infra.\nblacklist nouveau\noptions nouveau modeset=0\n"


def uvm_at_boot() -> str:
    # Loaded at boot so the hardened service never needs the setuid nvidia-modprobe.
    return "# Managed by autoglm-infra.\nnvidia_uvm\n"


def closure_preferences(
    driver_version: str, exact: list[tuple[str, str]], cudnn_version: str
) -> str:
    """apt preferences holding every package of the plan's closure at the planned release.

    NVIDIA's metas depend on ">=" floors, so without this apt fills the closure with the
    newest driver in the repository. The version glob binds only packages that publish
    the planned release (the container toolkit's 1.x versions never match).
    """
    stanzas = [(DRIVER_PACKAGES_REGEX, f"{driver_version}-*")]
    stanzas += [(name, version) for name, version in exact]
    if cudnn_version:
        stanzas.append(("/^(lib)?cudnn[0-9]/", f"{cudnn_version}-*"))
    body = "\n".join(
        f"Package: {package}\nPin: version {version}\nPin-Priority: {PIN_PRIORITY}\n"
        for package, version in stanzas
    )
    return "# Managed by autoglm-infra: the planned NVIDIA stack and nothing newer.\n" + body


def stage_files(repo_url: str, keyring: bytes) -> list[ManagedFile]:
    return [
        ManagedFile(KEYRING, keyring),
        ManagedFile(SOURCE, deb822_source("NVIDIA CUDA repository", repo_url, KEYRING).encode()),
        ManagedFile(UNATTENDED_BLACKLIST, unattended_blacklist().encode()),
        ManagedFile(NOUVEAU_BLACKLIST, nouveau_blacklist().encode()),
        ManagedFile(UVM_AT_BOOT, uvm_at_boot().encode()),
    ]
