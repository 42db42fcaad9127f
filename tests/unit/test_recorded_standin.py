"""The sandbox's nvidia-smi stand-in replays the recorded H200 outputs, byte for byte,
and refuses what was not recorded; run here with the recordings in place of the host's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from autoglm_infra.stages.nvidia.gpu_checks import SMI_QUERY, gpu_probe_script, parse_gpu_probe
from autoglm_testbed.recorded_gpu import (
    ON_HOST,
    RECORDED,
    nvidia_smi_standin,
    recorded_driver,
    recorded_holds,
    recorded_packages,
)


def standin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(nvidia_smi_standin().replace(f"d={ON_HOST}", f"d={RECORDED}"))
    smi.chmod(0o755)
    return bin_dir


def run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(bin_dir / "nvidia-smi"), *args], capture_output=True, check=False)


def test_replays_recorded_outputs_and_refuses_the_rest(tmp_path: Path) -> None:
    bin_dir = standin(tmp_path)
    assert run(bin_dir).stdout == (RECORDED / "h200-nvidia-smi.txt").read_bytes()
    assert run(bin_dir, "-q").stdout == (RECORDED / "h200-nvidia-smi-q.txt").read_bytes()
    query = run(bin_dir, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits")
    assert (
        query.stdout.decode() == "0, 00000000:00:06.0, NVIDIA H200, 580.159.04, Enabled, 143771\n"
    )
    version = run(bin_dir, "--query-gpu=driver_version", "--format=csv,noheader")
    assert version.stdout.decode() == f"{recorded_driver()}\n" == "580.159.04\n"
    other = run(bin_dir, "--query-gpu=temperature.gpu", "--format=csv")
    assert other.returncode == 2 and b"no recorded output" in other.stderr


def test_the_gpu_probe_reads_through_the_standin_what_it_read_on_the_real_host(
    tmp_path: Path,
) -> None:
    bin_dir = standin(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(
        ["sh", "-c", gpu_probe_script([])], capture_output=True, text=True, env=env, check=True
    )
    here, recorded = (
        parse_gpu_probe(out.stdout.splitlines()),
        parse_gpu_probe((RECORDED / "h200-gpu-probe.txt").read_text().splitlines()),
    )
    assert (here.gpus, here.cuda_supported) == (recorded.gpus, recorded.cuda_supported)
    assert here.smi_installed


def test_recorded_packages_and_holds() -> None:
    packages = dict(recorded_packages())
    assert packages["libcudnn9-cuda-13"] == "9.14.0.64-1"
    assert packages["cuda-cudart-13-0"] == "13.0.96-1"
    assert recorded_holds() == ["libcudnn9-cuda-13"]  # the other holds' versions were not recorded
