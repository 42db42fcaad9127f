"""Checks that refuse a host before anything changes on it. Pure: no pyinfra import."""

from __future__ import annotations

from autoglm_infra.host_profile import HostProfile

SUPPORTED_OS = {("ubuntu", "22.04"), ("ubuntu", "24.04"), ("debian", "12")}
SUPPORTED_ARCH = {"x86_64", "aarch64"}


def preflight_problems(profile: HostProfile, require_gpu: bool = True) -> list[str]:
    """Each problem says what is wrong, the evidence, and what to do about it."""
    problems = []
    if require_gpu and not profile.gpus:
        problems.append(
            "no NVIDIA GPU found (no PCI display device with vendor 0x10de in sysfs): check "
            "the GPU is attached (lspci -d 10de:), or set nvidia_require_gpu: false to install "
            "the stack without one"
        )
    if (profile.os_id, profile.os_version) not in SUPPORTED_OS:
        supported = ", ".join(f"{d} {v}" for d, v in sorted(SUPPORTED_OS))
        problems.append(
            f"unsupported OS {profile.os_id or '?'} {profile.os_version or '?'}: "
            f"use one of {supported}"
        )
    if profile.arch not in SUPPORTED_ARCH:
        problems.append(
            f"unsupported CPU architecture {profile.arch or '?'}: use x86_64 or aarch64 (sbsa)"
        )
    if not profile.systemd_booted:
        problems.append(
            "systemd is not PID 1 (no /run/systemd/system): the model service needs a booted "
            "systemd host, not a chroot or a plain container"
        )
    return problems


def describe_host(profile: HostProfile) -> str:
    gpus = f"{len(profile.gpus)} NVIDIA GPU(s)" if profile.gpus else "no NVIDIA GPU"
    return (
        f"{profile.os_id} {profile.os_version} {profile.arch}, {profile.cpus} CPUs, "
        f"{profile.mem_gib:.1f} GiB RAM, {profile.disk_free_gib:.1f} GiB free at "
        f"{profile.disk_path}, {gpus}"
    )
