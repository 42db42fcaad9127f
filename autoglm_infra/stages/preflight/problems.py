"""Checks that refuse a host before anything changes on it. Pure: no pyinfra import."""

from __future__ import annotations

from dataclasses import dataclass

from autoglm_infra.common.host_profile import HostProfile

SUPPORTED_OS = {("ubuntu", "22.04"), ("ubuntu", "24.04"), ("debian", "12")}
SUPPORTED_ARCH = {"x86_64", "aarch64"}


# Open-AutoGLM's recommendation; below it the host works but is slow: a warning.
RECOMMENDED_CPUS = 16
RECOMMENDED_MEM_GIB = 64


@dataclass(frozen=True)
class Minimums:
    cpus: int = 4
    mem_gib: float = 16
    disk_gib: float = 40


def preflight_problems(
    profile: HostProfile, require_gpu: bool = True, minimums: Minimums = Minimums()
) -> list[str]:
    """Each problem says what is wrong, the evidence, and what to do about it."""
    problems = resource_problems(profile, minimums)
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


def _num(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value}"


def resource_problems(profile: HostProfile, minimums: Minimums) -> list[str]:
    problems = []
    if profile.cpus < minimums.cpus:
        problems.append(
            f"{profile.cpus} CPU cores, preflight_min_cpus is {minimums.cpus}: use a larger host"
        )
    if profile.mem_gib < minimums.mem_gib:
        problems.append(
            f"{profile.mem_gib:.1f} GiB RAM, preflight_min_mem_gib is {_num(minimums.mem_gib)}: "
            "use a host with more memory"
        )
    if profile.disk_free_gib < minimums.disk_gib:
        problems.append(
            f"{profile.disk_free_gib:.1f} GiB free at {profile.disk_path or '?'} (where model_dir "
            f"will live), preflight_min_disk_gib is {_num(minimums.disk_gib)}: free space "
            "there, or point model_dir at a larger filesystem"
        )
    return problems


def resource_warnings(profile: HostProfile) -> list[str]:
    warnings = []
    if profile.cpus < RECOMMENDED_CPUS or profile.mem_gib < RECOMMENDED_MEM_GIB:
        warnings.append(
            f"{profile.cpus} CPU cores / {profile.mem_gib:.0f} GiB RAM is below Open-AutoGLM's "
            f"recommended {RECOMMENDED_CPUS} / {RECOMMENDED_MEM_GIB} GiB: expect slow "
            "pre-processing of screenshots"
        )
    return warnings


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
