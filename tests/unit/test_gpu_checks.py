"""GPU acceptance checks read nvidia-smi/kernel/dpkg output and judge it against the plan.

nvidia-smi cannot run here (no GPU): its branch is tested with output in the exact format
`nvidia-smi --query-gpu=... --format=csv,noheader,nounits` prints; the rest of the probe
runs for real on this machine.
"""

from __future__ import annotations

import subprocess

from autoglm_infra.common.checks import failed, format_table, to_json
from autoglm_infra.common.host_profile import HostProfile, PciGpu
from autoglm_infra.stages.nvidia.gpu_checks import evaluate_gpu, gpu_probe_script, parse_gpu_probe

PLAN_DRIVER, PLAN_CUDA = "570.172.08", "12.8"
PACKAGES = [("cuda-drivers-570", "570.172.08-1"), ("cuda-toolkit-12-8", "12.8.1-1")]
H100 = HostProfile(gpus=(PciGpu("0000:07:00.0", "0x2330", "0x030200"),), secure_boot="off")
HEALTHY = [
    "probe=gpu",
    "smi=installed",
    "gpu=0, 00000000:07:00.0, NVIDIA H100 80GB HBM3, 570.172.08, Enabled, 81559",
    "cuda=12.8",
    "module=570.172.08",
    "uvm=loaded",
    "pkg=cuda-drivers-570 570.172.08-1",
    "pkg=cuda-toolkit-12-8 12.8.1-1",
    "held=cuda-drivers-570",
    "held=cuda-toolkit-12-8",
    "kernel=6.8.0-90-generic",
    "modinfo=present",
    "modinfo_filename=/lib/modules/6.8.0-90-generic/updates/dkms/nvidia.ko.zst",
    "modinfo_version=570.172.08",
    "dkms=nvidia/570.172.08, 6.8.0-90-generic, x86_64: installed",
]


def _checks(lines: list[str], profile: HostProfile = H100) -> dict[str, tuple[str, str, str]]:
    checks = evaluate_gpu(profile, parse_gpu_probe(lines), PLAN_DRIVER, PLAN_CUDA, PACKAGES)
    return {c.name: (c.status, c.evidence, c.fix) for c in checks}


def _replace(prefix: str, line: str) -> list[str]:
    return [line if ln.startswith(prefix) else ln for ln in HEALTHY]


def test_healthy_gpu_host_passes_every_check() -> None:
    checks = _checks(HEALTHY)
    assert {status for status, _, _ in checks.values()} == {"ok"}, checks
    assert "NVIDIA H100 80GB HBM3" in checks["nvidia-smi"][1]


def test_nvml_mismatch_after_silent_upgrade_says_reboot() -> None:
    lines = [ln for ln in HEALTHY if not ln.startswith(("gpu=", "cuda="))]
    lines.append("smi_error=Failed to initialize NVML: Driver/library version mismatch")
    status, evidence, fix = _checks(lines)["nvidia-smi"]
    assert status == "fail" and "version mismatch" in evidence and "reboot" in fix


def test_module_older_than_user_space_fails() -> None:
    checks = _checks(_replace("module=", "module=570.133.20"))
    assert checks["module = user space"][0] == "fail"
    assert "570.133.20" in checks["module = user space"][1]


def test_driver_not_the_planned_one_fails() -> None:
    line = "gpu=0, 00000000:07:00.0, NVIDIA H100 80GB HBM3, 575.51.03, Enabled, 81559"
    assert _checks(_replace("gpu=", line))["driver version"][0] == "fail"


def test_driver_too_old_for_planned_cuda_fails() -> None:
    status, evidence, _ = _checks(_replace("cuda=", "cuda=12.4"))["CUDA supported"]
    assert status == "fail" and "12.4" in evidence and "12.8" in evidence


def test_persistence_off_uvm_missing_and_small_gpu_warn() -> None:
    line = "gpu=0, 00000000:07:00.0, NVIDIA L4, 570.172.08, Disabled, 23034"
    lines = [ln for ln in _replace("gpu=", line) if ln != "uvm=loaded"]
    checks = _checks(lines)
    assert checks["persistence mode"][0] == "warn"
    assert checks["nvidia_uvm loaded"][0] == "warn"
    assert checks["GPU memory"][0] == "warn" and "23034 MiB" in checks["GPU memory"][1]


def test_unheld_or_wrong_packages() -> None:
    assert _checks([ln for ln in HEALTHY if ln != "held=cuda-drivers-570"])["packages"][0] == "warn"
    wrong = _checks(_replace("pkg=cuda-toolkit", "pkg=cuda-toolkit-12-8 12.8.0-1"))["packages"]
    assert wrong[0] == "fail" and "12.8.0-1 (plan 12.8.1-1)" in wrong[1]


def test_gpu_missing_from_nvidia_smi_fails() -> None:
    two = HostProfile(gpus=(*H100.gpus, PciGpu("0000:08:00.0", "0x2330", "0x030200")))
    status, evidence, _ = _checks(HEALTHY, two)["nvidia-smi"]
    assert status == "fail" and "1 of 2" in evidence


def test_no_gpu_fails_and_skips_the_rest_explicitly() -> None:
    checks = _checks(HEALTHY, HostProfile())
    assert checks["gpu present"][0] == "fail"
    assert checks["nvidia-smi"][0] == "skip" and "not checked" in checks["nvidia-smi"][1]


def test_pending_reboot_fails() -> None:
    checks = _checks([*HEALTHY, "reboot=driver: installed 570.172.08, loaded 570.133.20"])
    assert checks["reboot"][0] == "fail"


def test_table_and_json_name_every_failure() -> None:
    checks = evaluate_gpu(
        HostProfile(), parse_gpu_probe(["probe=gpu"]), PLAN_DRIVER, PLAN_CUDA, PACKAGES
    )
    table = format_table("gpu-1", checks)
    assert "gpu present" in table and "fix: attach a GPU" in table
    assert [c.name for c in failed(checks)] == ["packages", "gpu present"]
    assert '"host": "gpu-1"' in to_json("gpu-1", checks)


def test_probe_runs_here_and_reads_dpkg() -> None:
    out = subprocess.run(
        ["sh", "-c", gpu_probe_script(["libc6", "dpkg"])],
        capture_output=True,
        text=True,
        check=True,
    )
    probe = parse_gpu_probe(out.stdout.splitlines())
    assert probe.read and not probe.smi_installed and not probe.gpus
    assert set(probe.packages) == {"libc6", "dpkg"} and all(probe.packages.values())


def test_an_empty_probe_vouches_for_nothing() -> None:
    checks = evaluate_gpu(H100, parse_gpu_probe([]), PLAN_DRIVER, PLAN_CUDA, PACKAGES)
    assert [(c.name, c.status) for c in checks] == [("gpu probe", "fail")]
