"""GPU acceptance run, pure core: the steps' outputs turned into one table of checks.

`scripts/gpu_acceptance.py` runs on the GPU host itself, read-only: the preflight and
gpu_check deploys through pyinfra's `@local` connector (GPU facts from the real
nvidia-smi, the stack resolver against the real driver and GPU: the same rows the doctor
shows), then `TORCH_BENCH` with whatever torch the host has (a CUDA matmul checked against
the CPU, and the GLM-4.1V vision patch-embedding Conv3d timed against the matmul that
computes the same thing). This module only parses what those steps printed, so it is
tested on recorded output. Never imports pyinfra.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from autoglm_infra.common.checks import Check, Status

# A Conv3d that runs this many times slower than the matmul computing the same patch
# embedding has fallen off cuDNN (torch 2.9.0; 2.9.1 with cuDNN < 9.15: 10-20x).
CONV3D_SLOWDOWN_WARN = 4.0

# Run with the host's python; prints one JSON line. GLM-4.1V's patch embedding is
# Conv3d(3, 1536, kernel=stride=(2, 14, 14)) over patches of 3x2x14x14 (Qwen2-VL layout):
# mathematically one [N, 1176] x [1176, 1536] matmul.
TORCH_BENCH = r"""
import json, sys, time
out = {"python": sys.version.split()[0]}
try:
    import torch
except Exception as exc:
    out["error"] = "torch not importable: %s" % exc
    print(json.dumps(out)); sys.exit(0)
out["torch"] = torch.__version__
out["cuda"] = torch.version.cuda or ""
out["cudnn"] = str(torch.backends.cudnn.version() or "")
if not torch.cuda.is_available():
    out["error"] = "torch.cuda.is_available() is False"
    print(json.dumps(out)); sys.exit(0)
dev = torch.device("cuda")
out["device"] = torch.cuda.get_device_name(0)
out["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)

def timed(fn, reps):
    fn(); torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1000.0

a = torch.randn(512, 512, dtype=torch.float64)
b = torch.randn(512, 512, dtype=torch.float64)
gpu = (a.to(dev, torch.float32) @ b.to(dev, torch.float32)).double().cpu()
out["matmul_max_rel_err"] = float(((gpu - a @ b).abs().max() / (a @ b).abs().max()).item())
n = 4096
x = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
ms = timed(lambda: x @ x, 20)
out["matmul_bf16_tflops"] = round(2 * n ** 3 / (ms / 1000.0) / 1e12, 1)
patches = 8192
conv = torch.nn.Conv3d(3, 1536, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=False)
conv = conv.to(dev, torch.bfloat16)
pix = torch.randn(patches, 3, 2, 14, 14, device=dev, dtype=torch.bfloat16)
w = conv.weight.reshape(1536, -1).t().contiguous()
flat = pix.reshape(patches, -1)
with torch.no_grad():
    same = (conv(pix).reshape(patches, -1).float() - (flat @ w).float()).abs().max().item()
    out["conv3d_ms"] = round(timed(lambda: conv(pix), 10), 3)
    out["conv3d_matmul_ms"] = round(timed(lambda: flat @ w, 10), 3)
out["conv3d_max_abs_diff"] = float(same)
print(json.dumps(out))
"""


def preflight_check(returncode: int, output: str) -> Check:
    """The preflight deploy's verdict: ok, or its refusal lines ("    - ...")."""
    if returncode == 0:
        return Check("preflight", "ok", "preflight ok (pyinfra @local deploys/preflight.py)")
    reasons = [line.strip()[2:] for line in output.splitlines() if line.startswith("    - ")]
    evidence = "; ".join(reasons) or _last_line(output) or f"exit status {returncode}"
    return Check("preflight", "fail", evidence, "see the preflight refusal")


def checks_from_json(text: str, step: str) -> list[Check]:
    """Rows a deploy wrote with AUTOGLM_CHECKS_JSON (checks.to_json); a missing or broken
    file is one failed row, never an empty pass."""
    try:
        data = json.loads(text)
        rows = [Check(**row) for row in data["checks"]]
    except (ValueError, KeyError, TypeError) as exc:
        return [Check(step, "fail", f"no readable {step} result ({exc})", f"run {step} alone")]
    if not rows:
        return [Check(step, "fail", f"{step} reported no checks", f"run {step} alone")]
    return rows


def bench_checks(returncode: int, output: str, python: str) -> list[Check]:
    """The TORCH_BENCH line as rows: torch + CUDA, the matmul, the Conv3d timing."""
    lines = [line for line in output.splitlines() if line.startswith("{")]
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if returncode != 0 or not result:
        why = _last_line(output) or f"exit status {returncode}"
        return [Check("torch", "fail", f"{python}: the benchmark did not finish: {why}")]
    where = f"torch {result.get('torch', '?')} (CUDA {result.get('cuda') or '-'}, cuDNN "
    where += f"{result.get('cudnn') or '-'}) in {python}"
    if "error" in result:
        status: Status = "skip" if "not importable" in result["error"] else "fail"
        fix = (
            "run it with a python that has torch, e.g. --python /opt/autoglm/venv/bin/python"
            if status == "skip"
            else "check the driver (nvidia-smi) and the torch CUDA build against it"
        )
        return [Check("torch", status, f"{result['error']} ({python})", fix)]
    rows = [Check("torch", "ok", f"{where} sees {result['device']} (cc {result['capability']})")]
    error = float(result["matmul_max_rel_err"])
    matmul_ok = error < 1e-3
    rows.append(
        Check(
            "cuda matmul",
            "ok" if matmul_ok else "fail",
            f"fp32 512x512 on the GPU vs fp64 on the CPU: max relative error {error:.1e}; "
            f"bf16 4096^3: {result['matmul_bf16_tflops']} TFLOPS",
            "" if matmul_ok else "the GPU computes wrong results: check the driver and GPU",
        )
    )
    conv_ms, matmul_ms = float(result["conv3d_ms"]), float(result["conv3d_matmul_ms"])
    ratio = conv_ms / matmul_ms if matmul_ms > 0 else float("inf")
    diff = float(result["conv3d_max_abs_diff"])
    evidence = (
        f"GLM-4.1V patch embedding, 8192 patches bf16: Conv3d {conv_ms:.3f} ms, the same as a "
        f"matmul {matmul_ms:.3f} ms ({ratio:.1f}x); max abs difference {diff:.3g}"
    )
    if diff > 1.0:
        rows.append(Check("conv3d", "fail", evidence, "Conv3d and matmul disagree"))
    elif ratio > CONV3D_SLOWDOWN_WARN:
        fix = (
            "Conv3d is off cuDNN (torch 2.9.0, or 2.9.1 with cuDNN < 9.15): use "
            "serve_engine_version auto (torch 2.14, cuDNN 9.24)"
        )
        rows.append(Check("conv3d", "warn", evidence, fix))
    else:
        rows.append(Check("conv3d", "ok", evidence))
    return rows


def acceptance_failed(checks: Sequence[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
