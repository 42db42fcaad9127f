"""The kernel module rows: built for the running kernel, loaded, and why not.

`dkms status` lines are in the shapes dkms 3.x and 2.x print (sources in
autoglm_infra/stages/nvidia/kernel_module.py); the probe's shell runs here for real.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from autoglm_infra.stages.nvidia.kernel_module import (
    DkmsEntry,
    ModuleState,
    module_checks,
    module_origin,
    module_probe_lines,
    parse_dkms_line,
    parse_module_state,
)

RUNNING = "6.1.0-57-cloud-amd64"
DKMS_FILE = f"/lib/modules/{RUNNING}/updates/dkms/nvidia.ko"
BUILT = ModuleState(
    kernel=RUNNING,
    modinfo_read=True,
    file=DKMS_FILE,
    file_version="550.54.15",
    dkms=(DkmsEntry("nvidia", "550.54.15", RUNNING, "installed"),),
)


def _rows(state: ModuleState, loaded: str = "", gpu: bool = True, driver: bool = True) -> dict:
    return {c.name: c for c in module_checks(state, loaded, gpu, driver)}


def test_dkms_status_lines_of_both_generations() -> None:
    three = parse_dkms_line(f"nvidia/550.54.15, {RUNNING}, x86_64: installed")
    two = parse_dkms_line(f"nvidia, 550.54.15, {RUNNING}, x86_64: installed")
    assert three == two == DkmsEntry("nvidia", "550.54.15", RUNNING, "installed")
    assert parse_dkms_line("nvidia/580.95.05: added") == DkmsEntry(
        "nvidia", "580.95.05", "", "added"
    )
    warned = parse_dkms_line(
        f"nvidia/550.54.15, {RUNNING}, x86_64: installed (WARNING! Diff between built and "
        "installed module!)"
    )
    assert warned and warned.state == "installed" and warned.note.startswith("WARNING! Diff")
    assert parse_dkms_line("Error! Could not locate dkms.conf file.") is None


def test_module_origin_from_its_path() -> None:
    assert module_origin(DKMS_FILE) == "built by DKMS"
    precompiled = "/lib/modules/6.8.0-1036-nvidia/kernel/nvidia-580srv-open/nvidia.ko"
    assert module_origin(precompiled) == "Ubuntu's precompiled, signed module"
    assert "runfile" in module_origin(f"/lib/modules/{RUNNING}/kernel/drivers/video/nvidia.ko")


def test_built_and_loaded() -> None:
    rows = _rows(BUILT, loaded="550.54.15")
    assert rows["module built"].status == rows["module loaded"].status == "ok"
    assert (
        RUNNING in rows["module built"].evidence
        and "built by DKMS" in rows["module built"].evidence
    )
    assert "unsigned" in rows["module built"].evidence


def test_built_only_for_an_older_kernel_names_the_fix() -> None:
    upgraded = ModuleState(
        kernel="6.1.0-58-cloud-amd64",
        modinfo_read=True,
        dkms=(DkmsEntry("nvidia", "550.54.15", RUNNING, "installed"),),
    )
    row = _rows(upgraded)["module built"]
    assert row.status == "fail"
    assert "no nvidia module for the running kernel 6.1.0-58-cloud-amd64" in row.evidence
    assert RUNNING in row.evidence
    assert "linux-headers-6.1.0-58-cloud-amd64" in row.fix and "dkms autoinstall" in row.fix
    assert f"boot a kernel it was built for ({RUNNING})" in row.fix


def test_built_but_not_installed_for_the_running_kernel() -> None:
    state = ModuleState(
        kernel=RUNNING,
        modinfo_read=True,
        dkms=(DkmsEntry("nvidia", "550.54.15", RUNNING, "built"),),
    )
    row = _rows(state)["module built"]
    assert row.status == "fail" and "only built" in row.evidence
    assert f"dkms install nvidia/550.54.15 -k {RUNNING}" in row.fix


def test_loaded_module_older_than_the_file_says_reboot() -> None:
    row = _rows(BUILT, loaded="535.183.01")["module loaded"]
    assert row.status == "fail" and "535.183.01" in row.evidence and "550.54.15" in row.evidence
    assert "reboot" in row.fix


def test_not_loaded_without_a_gpu_says_why_and_does_not_fail() -> None:
    state = ModuleState(**{**BUILT.__dict__, "kernel_log": ("NVRM: No NVIDIA GPU found.",)})
    row = _rows(state, gpu=False)["module loaded"]
    assert row.status == "skip"
    assert "no NVIDIA GPU" in row.evidence and "NVRM: No NVIDIA GPU found." in row.evidence


def test_not_loaded_with_a_gpu_under_secure_boot_names_the_key() -> None:
    state = ModuleState(
        **{
            **BUILT.__dict__,
            "kernel_log": ("Lockdown: modprobe: unsigned module loading is restricted",),
        }
    )
    row = _rows(state)["module loaded"]
    assert row.status == "fail" and "Lockdown" in row.evidence and "mokutil --import" in row.fix


def test_no_module_anywhere() -> None:
    nothing = ModuleState(kernel=RUNNING, modinfo_read=True)
    assert _rows(nothing, gpu=False, driver=False)["module built"].status == "skip"
    assert _rows(nothing, gpu=True, driver=True)["module built"].status == "fail"
    assert (
        "nvidia 550.54.15 is loaded" in _rows(nothing, loaded="550.54.15")["module built"].evidence
    )
    no_kmod = ModuleState(kernel=RUNNING)
    assert "modinfo (kmod) is not installed" in _rows(no_kmod)["module built"].evidence


def test_a_probe_without_the_kernel_vouches_for_nothing() -> None:
    rows = _rows(ModuleState(), loaded="550.54.15")
    assert {r.status for r in rows.values()} == {"skip"}


def test_probe_lines_run_here() -> None:
    """This machine has no nvidia module: the lines run, name the running kernel, and
    read no module file, DKMS entry or kernel message about nvidia."""
    out = subprocess.run(
        ["sh", "-c", "\n".join([*module_probe_lines(), "true"])],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    values = dict(line.partition("=")[::2] for line in lines)
    running = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    state = parse_module_state(values, [], [])
    assert state.kernel == running
    assert not state.file and not state.dkms


def test_a_secure_boot_refusal_is_read_from_the_kernel_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Recorded in a Secure Boot VM (`make vm-secureboot`, 2026-12-06): `modprobe nvidia`
    of DKMS's module, signed with an unenrolled key, failed "Key was rejected by service"
    and the kernel's only line names no module. The probe must keep it."""
    recorded = Path(__file__).parents[1] / "fixtures/recorded/secureboot-vm-dmesg.txt"
    shim = tmp_path / "dmesg"
    shim.write_text(f"#!/bin/sh\ncat {recorded}\n")
    shim.chmod(0o755)
    out = subprocess.run(
        ["sh", "-c", "\n".join([*module_probe_lines(), "true"])],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
        check=True,
    ).stdout
    klog = [line.partition("=")[2] for line in out.splitlines() if line.startswith("klog=")]
    assert "Loading of module with unavailable key is rejected" in klog
    state = ModuleState(**{**BUILT.__dict__, "kernel_log": tuple(klog)})
    row = _rows(state)["module loaded"]
    assert row.status == "fail" and "mokutil --import /var/lib/dkms/mok.pub" in row.fix
