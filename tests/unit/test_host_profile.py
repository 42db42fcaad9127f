"""The host probe's output parses into a typed profile; preflight explains refusals."""

from __future__ import annotations

import subprocess

from autoglm_infra.common.host_profile import parse_host_profile, profile_script
from autoglm_infra.stages.preflight.problems import describe_host, preflight_problems

RECORDED_H100_HOST = """\
os_id=ubuntu
os_version=22.04
arch=x86_64
kernel=5.15.0-119-generic
cpus=26
mem_kib=247512344
disk_path=/srv
disk_free_kib=1932735283
gpu=0000:00:07.0 0x2330 0x030200
nvidia_module=570.172.08
secure_boot=off
systemd=yes
virt=kvm
""".splitlines()


def test_recorded_gpu_host_parses() -> None:
    profile = parse_host_profile(RECORDED_H100_HOST)
    assert (profile.os_id, profile.os_version, profile.arch) == ("ubuntu", "22.04", "x86_64")
    assert profile.cpus == 26
    assert profile.gpus[0].device_id == "0x2330"
    assert profile.nvidia_module_version == "570.172.08"
    assert profile.systemd_booted
    assert preflight_problems(profile) == []
    assert "1 NVIDIA GPU" in describe_host(profile)


def test_probe_runs_here_and_reads_this_machine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "not" / "yet" / "there"
    out = subprocess.run(
        ["sh", "-c", profile_script(str(missing))], capture_output=True, text=True, check=True
    )
    profile = parse_host_profile(out.stdout.splitlines())
    assert profile.os_id == "debian"
    assert profile.cpus >= 1
    assert profile.mem_kib > 0
    assert profile.disk_path == str(tmp_path)  # nearest existing parent
    assert profile.disk_free_kib > 0


def test_pci_scan_finds_nvidia_display_functions_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The scan over PCI functions (sysfs's layout: one directory per function, files with
    one 0x line each): NVIDIA's display controllers are GPUs; its audio function, another
    vendor's VGA and a function without a vendor file are not."""
    devices = tmp_path / "devices"
    functions = {
        "0000:17:00.0": ("0x10de", "0x2335", "0x030200"),  # H200, 3D controller
        "0000:17:00.1": ("0x10de", "0x22ba", "0x040300"),  # its HD audio
        "0000:03:00.0": ("0x1a03", "0x2000", "0x030000"),  # ASPEED BMC VGA
        "0000:65:00.0": ("0x10de", "0x2330", "0x030200"),  # H100
    }
    for name, (vendor, device, klass) in functions.items():
        d = devices / name
        d.mkdir(parents=True)
        for file, value in (("vendor", vendor), ("device", device), ("class", klass)):
            (d / file).write_text(value + "\n")
    (devices / "0000:00:00.0").mkdir()  # no vendor file
    script = profile_script("/").replace("/sys/bus/pci/devices", str(devices))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    gpus = parse_host_profile(out.stdout.splitlines()).gpus
    assert sorted((g.address, g.device_id) for g in gpus) == [
        ("0000:17:00.0", "0x2335"),
        ("0000:65:00.0", "0x2330"),
    ]


def test_unsupported_os_and_no_systemd_refused_with_fix() -> None:
    lines = [ln for ln in RECORDED_H100_HOST if not ln.startswith(("os_version", "systemd"))]
    lines = [ln for ln in lines if not ln.startswith("gpu=")]
    problems = preflight_problems(parse_host_profile([*lines, "os_version=20.04"]))
    assert any("no NVIDIA GPU found" in p and "nvidia_require_gpu" in p for p in problems)
    assert any("unsupported OS ubuntu 20.04" in p and "debian 12" in p for p in problems)
    assert any("systemd is not PID 1" in p for p in problems)


def _fresh_secure_boot_host(*extra: str) -> list[str]:
    """The recorded host before its first driver install, with Secure Boot on."""
    keep = [ln for ln in RECORDED_H100_HOST if not ln.startswith(("nvidia_module", "secure"))]
    return [*keep, "secure_boot=on", *extra]


def test_secure_boot_without_enrolled_key_is_refused_with_mokutil_steps() -> None:
    for mok, state in ((None, "no DKMS module signing key"), ("not-enrolled", "not enrolled")):
        lines = _fresh_secure_boot_host(*([f"mok={mok}"] if mok else []))
        problems = preflight_problems(parse_host_profile(lines))
        assert len(problems) == 1, problems
        assert state in problems[0] and "mokutil --import" in problems[0]


def test_secure_boot_is_fine_with_enrolled_key_or_a_loaded_driver() -> None:
    assert preflight_problems(parse_host_profile(_fresh_secure_boot_host("mok=enrolled"))) == []
    loaded = _fresh_secure_boot_host("nvidia_module=570.172.08")
    assert preflight_problems(parse_host_profile(loaded)) == []


def test_secure_boot_probe_reports_key_state_through_mokutil(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Run the probe's Secure Boot branch with a fake EFI variable and a real shell."""
    efivar = tmp_path / "SecureBoot"
    efivar.write_bytes(b"\x06\x00\x00\x00\x01")  # attributes (4 bytes) + enabled
    key = tmp_path / "mok.pub"
    key.write_text("key")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    mokutil = bindir / "mokutil"
    mokutil.write_text('#!/bin/sh\necho "$2 is already enrolled"\n')
    mokutil.chmod(0o755)
    from autoglm_infra.common import host_profile

    script = profile_script("/").replace(host_profile._EFI_SECURE_BOOT, str(efivar))
    script = script.replace(host_profile.MOK_KEYS[0], str(key))
    out = subprocess.run(
        ["sh", "-c", f"PATH={bindir}:$PATH; {script}"], capture_output=True, text=True, check=True
    )
    profile = parse_host_profile(out.stdout.splitlines())
    assert (profile.secure_boot, profile.module_signing_key) == ("on", "enrolled")


def test_the_secure_boot_variable_is_the_one_real_firmware_has() -> None:
    """Listed in a Secure Boot VM (OVMF with Microsoft's keys, `make vm-secureboot`); the
    probe's name for it once had a wrong GUID, which read every host as "unknown"."""
    from pathlib import Path

    from autoglm_infra.common import host_profile

    listed = Path(__file__).parents[1] / "fixtures/recorded/secureboot-vm-efivars.txt"
    assert Path(host_profile._EFI_SECURE_BOOT).name in listed.read_text().split()
    assert Path(host_profile._EFI_SECURE_BOOT).parent == Path("/sys/firmware/efi/efivars")


def test_nouveau_kernel_headers_and_dkms_are_read_from_the_host(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What the driver stage decides its reboot and the headers install on: nouveau in
    /sys/module, the running kernel's build link, dkms's binary."""
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    module, modules, sbin = tmp_path / "module", tmp_path / "modules", tmp_path / "sbin"
    (module / "nouveau").mkdir(parents=True)
    (modules / kernel / "build").mkdir(parents=True)
    sbin.mkdir()
    (sbin / "dkms").write_text("#!/bin/sh\n")
    (sbin / "dkms").chmod(0o755)
    base = profile_script("/")

    def read(script: str):  # type: ignore[no-untyped-def]
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
        return parse_host_profile(out.stdout.splitlines())

    found = read(
        base.replace("/sys/module/nouveau", str(module / "nouveau"))
        .replace("/lib/modules/", f"{modules}/")
        .replace("/usr/sbin/dkms", str(sbin / "dkms"))
        .replace("/usr/bin/dkms", str(tmp_path / "none"))
    )
    assert (found.nouveau_loaded, found.kernel_headers, found.dkms) == (True, True, True)
    assert found.kernel == kernel
    absent = read(
        base.replace("/sys/module/nouveau", str(tmp_path / "none"))
        .replace("/lib/modules/", f"{tmp_path}/none/")
        .replace("/usr/sbin/dkms", str(tmp_path / "none"))
        .replace("/usr/bin/dkms", str(tmp_path / "none"))
    )
    assert (absent.nouveau_loaded, absent.kernel_headers, absent.dkms) == (False, False, False)
    assert "nouveau" not in absent.extra and "dkms" not in found.extra


def test_apparmor_counts_only_where_the_kernel_enforces_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As runc decides it: securityfs has apparmor/ and parameters/enabled reads Y. Debian
    12's kernels enforce it (the VM); the controller's kernel here has neither file."""
    securityfs, param = tmp_path / "securityfs", tmp_path / "enabled"
    (securityfs / "apparmor").mkdir(parents=True)
    base = profile_script("/")

    def read(enabled: str | None, with_securityfs: bool = True) -> bool:
        if enabled is None:
            param.unlink(missing_ok=True)
        else:
            param.write_text(enabled + "\n")
        script = base.replace(
            "/sys/kernel/security/apparmor",
            str(securityfs / "apparmor") if with_securityfs else str(tmp_path / "none"),
        ).replace("/sys/module/apparmor/parameters/enabled", str(param))
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
        assert "apparmor" not in out.stderr, out.stderr
        return parse_host_profile(out.stdout.splitlines()).apparmor

    assert read("Y") is True
    assert read("N") is False
    assert read(None) is False
    assert read("Y", with_securityfs=False) is False
