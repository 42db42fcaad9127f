"""GPU acceptance run, on the GPU host itself, read-only (`make gpu-acceptance`).

    python scripts/gpu_acceptance.py                  # bench with the service venv's python
    python scripts/gpu_acceptance.py --python python3 # or any python with torch

Runs `pyinfra -y @local deploys/preflight.py` and `deploys/gpu_check.py` (GPU facts from the
real nvidia-smi, the stack resolver against the real driver and GPU: the doctor's GPU rows),
then a torch CUDA matmul and a Conv3d timing with the chosen python's torch. Prints one
table; exits 1 when any row failed. Each step has its own timeout (all under 10 minutes).
Changes nothing on the host.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoglm_infra.common.checks import Check, format_table  # noqa: E402
from autoglm_infra.doctor import acceptance as ga  # noqa: E402

SERVICE_PYTHON = "/opt/autoglm/venv/bin/python"


def run(argv: list[str], timeout: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout} s: {' '.join(argv[:3])}"
    except OSError as exc:
        return 127, str(exc)
    return done.returncode, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", help=f"python for the torch bench (default {SERVICE_PYTHON})")
    parser.add_argument("--pyinfra", default=str(Path(sys.executable).with_name("pyinfra")))
    args = parser.parse_args(argv)
    python = args.python or (SERVICE_PYTHON if Path(SERVICE_PYTHON).exists() else "python3")

    checks: list[Check] = []
    code, out = run([args.pyinfra, "-y", "@local", "deploys/preflight.py"], 180)
    checks.append(ga.preflight_check(code, out))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "AUTOGLM_CHECKS_JSON": tmp}
        code, out = run([args.pyinfra, "-y", "@local", "deploys/gpu_check.py"], 180, env)
        written = sorted(Path(tmp).glob("*.gpu_check.json"))
        text = written[0].read_text() if written else out[-2000:]
        checks += ga.checks_from_json(text, "gpu_check")
    code, out = run([python, "-c", ga.TORCH_BENCH], 240)
    checks += ga.bench_checks(code, out, python)
    print(format_table(f"{socket.gethostname()} (GPU acceptance, read-only)", checks))
    return 1 if ga.acceptance_failed(checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
