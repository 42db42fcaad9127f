"""The doctor's host checks and endpoint exposure, from real `ss` output shapes."""

from __future__ import annotations

import socket
import subprocess

from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.doctor.host import (
    exposure_check,
    host_checks,
    listeners_script,
    parse_listeners,
    secure_boot_check,
)
from autoglm_infra.stages.preflight.problems import Minimums

SS_OUTPUT = ["127.0.0.1:8000", "0.0.0.0:22", "[::]:22", "*:9000", "[::1]:8001"]


def test_parse_ss_addresses() -> None:
    parsed = [(entry.address, entry.port) for entry in parse_listeners(SS_OUTPUT)]
    assert parsed == [
        ("127.0.0.1", 8000),
        ("0.0.0.0", 22),
        ("::", 22),
        ("*", 9000),
        ("::1", 8001),
    ]


def test_endpoint_on_loopback_is_ok_and_on_all_interfaces_fails() -> None:
    assert exposure_check("127.0.0.1", 8000, parse_listeners(SS_OUTPUT)).status == "ok"
    assert exposure_check("::1", 8001, parse_listeners(SS_OUTPUT)).status == "ok"
    exposed = exposure_check("127.0.0.1", 9000, parse_listeners(SS_OUTPUT))
    assert exposed.status == "fail" and "127.0.0.1:PORT:PORT" in exposed.fix
    assert exposure_check("0.0.0.0", 22, parse_listeners(SS_OUTPUT)).status == "ok"


def test_nothing_listening_warns() -> None:
    assert exposure_check("127.0.0.1", 8123, []).status == "warn"


def test_listeners_script_sees_a_real_socket() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = subprocess.run(
            ["sh", "-c", listeners_script()], capture_output=True, text=True, check=True
        )
        assert (
            exposure_check("127.0.0.1", port, parse_listeners(out.stdout.splitlines())).status
            == "ok"
        )


def test_host_checks_report_resources_and_systemd() -> None:
    checks = {c.name: c for c in host_checks(HostProfile(cpus=2, arch="x86_64"), Minimums())}
    assert checks["host resources"].status == "fail"
    assert "preflight_min_cpus" in checks["host resources"].evidence
    assert checks["systemd"].status == "fail"


def test_host_checks_of_an_empty_profile_vouch_for_nothing() -> None:
    checks = host_checks(HostProfile(), Minimums())
    assert [(c.name, c.status) for c in checks] == [("host profile", "fail")]


def test_secure_boot_is_ok_only_for_a_state_that_was_read() -> None:
    read = {"arch": "x86_64", "cpus": 64}
    no_efi = secure_boot_check(HostProfile(**read, efi=False))  # type: ignore[arg-type]
    assert no_efi.status == "ok" and "without EFI" in no_efi.evidence
    off = secure_boot_check(HostProfile(**read, efi=True, secure_boot="off"))  # type: ignore[arg-type]
    assert off.status == "ok" and "variable is 0" in off.evidence
    unknown = secure_boot_check(HostProfile(**read, efi=True))  # type: ignore[arg-type]
    assert unknown.status == "warn" and "unknown" in unknown.evidence
    assert secure_boot_check(HostProfile(**read)).status == "warn"  # type: ignore[arg-type]
