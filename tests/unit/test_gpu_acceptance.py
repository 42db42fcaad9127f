"""The GPU acceptance run's parsing (autoglm_infra/doctor/acceptance.py), on recorded output.

No GPU is lent to this project's test machine: the gpu_check rows come from the probe
recorded on the real H200 host (tests/fixtures/recorded), the torch bench runs for real with
this venv's python (no torch here), and the bench's GPU result lines are constructed in the
shape TORCH_BENCH prints (marked below), since no GPU run of it was recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from autoglm_infra.common.checks import json_file_name, to_json
from autoglm_infra.common.host_profile import HostProfile, PciGpu
from autoglm_infra.config.schema import Settings
from autoglm_infra.doctor import acceptance as ga
from autoglm_infra.doctor.table import gpu_rows
from autoglm_infra.stages.nvidia.gpu_checks import parse_gpu_probe

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"
H200_HOST = HostProfile(
    os_id="ubuntu", os_version="24.04", arch="x86_64", cpus=16, efi=False,
    gpus=(PciGpu("0000:00:06.0", "0x2335", "0x030200"),), nvidia_module_version="580.159.04",
)  # fmt: skip
# Constructed in TORCH_BENCH's output shape (not a recording): an H200 with torch 2.11.0+cu130,
# the torch the recorded host has.
GPU_RESULT = {
    "python": "3.12.3", "torch": "2.11.0+cu130", "cuda": "13.0", "cudnn": "91300",
    "device": "NVIDIA H200", "capability": "9.0", "matmul_max_rel_err": 2.1e-7,
    "matmul_bf16_tflops": 700.0, "conv3d_ms": 0.4, "conv3d_matmul_ms": 0.2,
    "conv3d_max_abs_diff": 0.03,
}  # fmt: skip


def test_gpu_check_rows_of_the_recorded_h200_survive_the_json_step() -> None:
    probe = parse_gpu_probe((RECORDED / "h200-gpu-probe.txt").read_text().splitlines())
    rows, plan = gpu_rows(Settings(), H200_HOST, probe)

    assert plan is not None and plan.driver_version == "580.159.04"  # kept, never downgraded
    assert plan.engine_version == "0.33.0" and plan.torch_flavour == "cu130"
    parsed = ga.checks_from_json(to_json("h200", rows), "gpu_check")
    assert parsed == rows
    by_name = {c.name: c for c in parsed}
    assert by_name["nvidia-smi"].status == "ok"
    assert "13.0" in by_name["CUDA supported"].evidence


def test_a_connector_host_name_is_one_file_not_a_directory(tmp_path: Path) -> None:
    # pyinfra names a Vagrant machine "@vagrant/local", a container "@docker/<id>"
    for name in ("@vagrant/local", "@docker/abc", "gpu-1.example.com", "@local"):
        path = tmp_path / json_file_name(name, "gpu_check")
        path.write_text(to_json(name, []))
        assert path.parent == tmp_path and path.name.endswith(".gpu_check.json")
    assert json_file_name("@vagrant/local", "doctor") == "@vagrant_local.doctor.json"


def test_a_missing_gpu_check_result_is_a_failure_not_a_pass() -> None:
    for text in ("", "Traceback (most recent call last):", json.dumps({"checks": []})):
        [row] = ga.checks_from_json(text, "gpu_check")
        assert row.status == "fail" and row.name == "gpu_check"


def test_the_bench_without_torch_is_skipped_and_says_how_to_run_it() -> None:
    """TORCH_BENCH for real with this venv's python, which has no torch."""
    done = subprocess.run(
        [sys.executable, "-c", ga.TORCH_BENCH], capture_output=True, text=True, timeout=60
    )
    [row] = ga.bench_checks(done.returncode, done.stdout, sys.executable)

    assert row.name == "torch" and row.status == "skip"
    assert "torch not importable" in row.evidence and "--python" in row.fix


def test_a_healthy_gpu_result_passes_every_row() -> None:
    rows = ga.bench_checks(0, json.dumps(GPU_RESULT) + "\n", "/opt/autoglm/venv/bin/python")

    assert [(r.name, r.status) for r in rows] == [
        ("torch", "ok"),
        ("cuda matmul", "ok"),
        ("conv3d", "ok"),
    ]
    assert "NVIDIA H200 (cc 9.0)" in rows[0].evidence and "700.0 TFLOPS" in rows[1].evidence
    assert not ga.acceptance_failed(rows)


def test_a_conv3d_off_cudnn_warns_and_names_the_fix() -> None:
    slow = {**GPU_RESULT, "torch": "2.9.0+cu128", "conv3d_ms": 4.0, "conv3d_matmul_ms": 0.2}
    rows = ga.bench_checks(0, json.dumps(slow), "python3")

    conv = rows[-1]
    assert conv.status == "warn" and "(20.0x)" in conv.evidence
    assert "serve_engine_version auto" in conv.fix
    assert not ga.acceptance_failed(rows)


def test_wrong_gpu_results_and_a_crashed_bench_fail() -> None:
    wrong = {**GPU_RESULT, "matmul_max_rel_err": 0.5}
    assert ga.acceptance_failed(ga.bench_checks(0, json.dumps(wrong), "python3"))
    no_cuda = {"python": "3.12.3", "torch": "2.14.0", "error": "torch.cuda.is_available() is False"}
    [row] = ga.bench_checks(0, json.dumps(no_cuda), "python3")
    assert row.status == "fail"
    [crashed] = ga.bench_checks(139, "Segmentation fault", "python3")
    assert crashed.status == "fail" and "Segmentation fault" in crashed.evidence


def test_preflight_refusal_lines_become_the_evidence() -> None:
    output = (
        "--> Starting operation\n"
        "    preflight refused @local, nothing was changed:\n"
        "    - systemd is not PID 1 (no /run/systemd/system): the model service needs a "
        "booted systemd host\n"
    )
    row = ga.preflight_check(1, output)
    assert row.status == "fail" and row.evidence.startswith("systemd is not PID 1")
    assert ga.preflight_check(0, "").status == "ok"
