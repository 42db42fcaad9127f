"""The doctor's host checks: read-only, safe on any host, each with evidence and a fix.

Stages contribute checks of what they manage; this module holds the ones about the host
itself and the endpoint's exposure. Pure: no pyinfra import.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from autoglm_infra.common.checks import Check
from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.stages.preflight.problems import Minimums, resource_problems, secure_boot_problem


@dataclass(frozen=True)
class Listener:
    address: str  # as `ss` prints it: 127.0.0.1, 0.0.0.0, ::, *, [::1]
    port: int


def listeners_script() -> str:
    """TCP listeners, one `ADDRESS:PORT` per line (iproute2's ss is on every target OS)."""
    return "ss -ltnH 2>/dev/null | awk '{print $4}' || true"


def parse_listeners(lines: Sequence[str]) -> list[Listener]:
    found = []
    for line in lines:
        address, sep, port = line.strip().rpartition(":")
        if sep and port.isdigit():
            found.append(Listener(address.strip("[]").split("%")[0], int(port)))
    return found


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # "*" and host names: treat as exposed


def host_checks(profile: HostProfile, minimums: Minimums) -> list[Check]:
    if not profile.read:
        return [
            Check(
                "host profile",
                "fail",
                "the host probe printed nothing: resources, systemd and Secure Boot not read",
                "check that the login shell runs /bin/sh scripts (pyinfra -vv shows the output)",
            )
        ]
    checks = []
    resources = resource_problems(profile, minimums)
    checks.append(
        Check(
            "host resources",
            "fail" if resources else "ok",
            "; ".join(resources)
            or f"{profile.cpus} CPUs, {profile.mem_gib:.0f} GiB RAM, "
            f"{profile.disk_free_gib:.0f} GiB free at {profile.disk_path}",
            "see evidence" if resources else "",
        )
    )
    checks.append(
        Check(
            "systemd",
            "ok" if profile.systemd_booted else "fail",
            "PID 1" if profile.systemd_booted else "not PID 1 (chroot or plain container)",
            "run on a booted systemd host",
        )
    )
    checks.append(secure_boot_check(profile))
    return checks


def secure_boot_check(profile: HostProfile) -> Check:
    """ok only for a state that was read: the EFI variable, or no EFI at all (legacy boot)."""
    name = "secure boot"
    problem = secure_boot_problem(profile)
    if problem:
        return Check(
            name, "fail", problem, "enroll a MOK key or disable Secure Boot (see evidence)"
        )
    if profile.efi is False:
        return Check(name, "ok", "off: booted without EFI (legacy BIOS), no Secure Boot there")
    if profile.secure_boot == "on":
        why = (
            f"the loaded driver {profile.nvidia_module_version} proves its modules are accepted"
            if profile.nvidia_module_version
            else f"module signing key {profile.module_signing_key}"
            if profile.gpus
            else "no NVIDIA GPU, no module to load"
        )
        return Check(name, "ok", f"on (EFI SecureBoot variable); {why}")
    if profile.secure_boot == "off":
        return Check(name, "ok", "off (EFI SecureBoot variable is 0)")
    return Check(
        name,
        "warn",
        "unknown: booted through EFI, but the SecureBoot variable was not readable",
        "read it as root: `mokutil --sb-state` or "
        "`od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-*`",
    )


def exposure_check(serve_host: str, serve_port: int, listeners: Sequence[Listener]) -> Check:
    """The endpoint must listen where configured: on loopback unless serve_host says otherwise."""
    on_port = [entry for entry in listeners if entry.port == serve_port]
    if not on_port:
        return Check(
            "endpoint exposure",
            "warn",
            f"nothing listens on port {serve_port}",
            "check the model service (systemctl status / docker ps)",
        )
    exposed = [entry.address for entry in on_port if not _is_loopback(entry.address)]
    if exposed and _is_loopback(serve_host):
        return Check(
            "endpoint exposure",
            "fail",
            f"port {serve_port} listens on {', '.join(sorted(set(exposed)))}, "
            f"but serve_host is {serve_host}",
            "bind to 127.0.0.1 (serve_host) and publish Docker ports as 127.0.0.1:PORT:PORT; "
            "front it with an authenticating proxy if it must be reachable",
        )
    where = ", ".join(sorted({entry.address for entry in on_port}))
    return Check("endpoint exposure", "ok", f"port {serve_port} listens on {where}")


def smoke_args(serve_host: str, serve_port: int, model: str, key_file: str) -> list[str]:
    """The smoke tool's arguments for a quick look: /health and /v1/models, one try."""
    address = ipaddress.ip_address(serve_host)
    if address.is_unspecified:  # bound to every interface: loopback reaches it too
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    netloc = f"[{address}]" if address.version == 6 else str(address)
    return ["--base-url", f"http://{netloc}:{serve_port}", "--model", model,
            "--key-file", key_file, "--tries", "1", "--no-chat"]  # fmt: skip
