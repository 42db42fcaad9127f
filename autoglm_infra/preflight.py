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
    problem = secure_boot_problem(profile)
    if problem:
        problems.append(problem)
    if not profile.systemd_booted:
        problems.append(
            "systemd is not PID 1 (no /run/systemd/system): the model service needs a booted "
            "systemd host, not a chroot or a plain container"
        )
    return problems


def secure_boot_problem(profile: HostProfile) -> str | None:
    """Secure Boot refuses unsigned kernel modules, and DKMS builds NVIDIA's at install.

    Without an enrolled Machine Owner Key the driver installs but never loads ("Key was
    rejected by service"), which is worse than refusing up front. A driver that is already
    loaded proves its modules are accepted, so that host is fine.
    """
    if profile.secure_boot != "on" or not profile.gpus or profile.nvidia_module_version:
        return None
    if profile.module_signing_key == "enrolled":
        return None
    state = (
        "its DKMS signing key is not enrolled yet"
        if profile.module_signing_key == "not-enrolled"
        else "no DKMS module signing key exists"
    )
    return (
        f"Secure Boot is on and {state}: the NVIDIA kernel modules DKMS builds would be "
        "rejected at load. Either disable Secure Boot in the firmware, or create and enroll a "
        "Machine Owner Key first: `dkms generate_mok` (Ubuntu: `update-secureboot-policy "
        "--new-key`), `mokutil --import /var/lib/dkms/mok.pub`, reboot, confirm the key in "
        "the blue MOK manager screen, then run the converge again"
    )


def describe_host(profile: HostProfile) -> str:
    gpus = f"{len(profile.gpus)} NVIDIA GPU(s)" if profile.gpus else "no NVIDIA GPU"
    return (
        f"{profile.os_id} {profile.os_version} {profile.arch}, {profile.cpus} CPUs, "
        f"{profile.mem_gib:.1f} GiB RAM, {profile.disk_free_gib:.1f} GiB free at "
        f"{profile.disk_path}, {gpus}"
    )
