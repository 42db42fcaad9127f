"""The host probe's output parses into a typed profile; preflight explains refusals."""

from __future__ import annotations

import subprocess

from autoglm_infra.host_profile import parse_host_profile, probe_script
from autoglm_infra.preflight import describe_host, preflight_problems

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
        ["sh", "-c", probe_script(str(missing))], capture_output=True, text=True, check=True
    )
    profile = parse_host_profile(out.stdout.splitlines())
    assert profile.os_id == "debian"
    assert profile.cpus >= 1
    assert profile.mem_kib > 0
    assert profile.disk_path == str(tmp_path)  # nearest existing parent
    assert profile.disk_free_kib > 0


def test_unsupported_os_and_no_systemd_refused_with_fix() -> None:
    lines = [ln for ln in RECORDED_H100_HOST if not ln.startswith(("os_version", "systemd"))]
    lines = [ln for ln in lines if not ln.startswith("gpu=")]
    problems = preflight_problems(parse_host_profile([*lines, "os_version=20.04"]))
    assert any("no NVIDIA GPU found" in p and "nvidia_require_gpu" in p for p in problems)
    assert any("unsupported OS ubuntu 20.04" in p and "debian 12" in p for p in problems)
    assert any("systemd is not PID 1" in p for p in problems)
