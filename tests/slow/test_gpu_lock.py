"""The GPU locks install into a venv exactly as the stage installs them (no GPU needed).

    .venv/bin/pytest -m slow tests/slow          # ~4-6 GB of wheels per profile from PyPI
    # also into other interpreters (each takes the lock variant for its Python minor):
    AUTOGLM_SLOW_PYTHONS="python3.10 python3.12" .venv/bin/pytest -m slow tests/slow
    # only some profiles:
    AUTOGLM_SLOW_PROFILES="sglang-0.5.23-cu130" .venv/bin/pytest -m slow tests/slow

Same pip flags as the stage (`--require-hashes --only-binary=:all: --no-deps`), pip's
normal configuration for the index; then the lock's import check and `pip check`, where
only the lock's declared `expected-conflict` lines may appear (the current profiles declare
none: their `pip check` must be clean).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stages.python_env import venv as pe

pytestmark = pytest.mark.slow


INTERPRETERS = [sys.executable, *os.environ.get("AUTOGLM_SLOW_PYTHONS", "").split()]
# The Open-AutoGLM README profile (transformers 5 forced over vLLM 0.12.0's pin) and the
# conflict-free ones, SGLang's included (autoglm_infra/locks/README.md).
OVERLAY_PROFILES = ["vllm-cu128"]
CLEAN_PROFILES = ["vllm-0.19.1-cu128", "vllm-0.33.0-cu130", "sglang-0.5.23-cu130"]
PROFILES = os.environ.get("AUTOGLM_SLOW_PROFILES", "").split() or OVERLAY_PROFILES + CLEAN_PROFILES


def python_version(interpreter: str) -> str:
    code = "import platform; print(platform.python_version())"
    return subprocess.run([interpreter, "-c", code], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_gpu_lock_installs_and_only_the_declared_conflict_remains(
    profile: str, interpreter: str, tmp_path: Path
) -> None:
    version = python_version(interpreter)
    lock = pe.load_lock(profile, DEFAULT_LOCKS_DIR, pe.AUTO, version)
    pe.check_interpreter(interpreter, version, lock)
    venv = tmp_path / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(lock.requirements_text())
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
         "--require-hashes", "--only-binary=:all:", "--no-deps", "-r", str(requirements)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    freeze = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
    ).stdout
    pairs = (line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    installed = {str(canonicalize_name(name)): version for name, version in pairs}
    assert pe.drift(lock, installed) == []

    imports = "; ".join(f"import {m}" for m in lock.import_check)
    imported = subprocess.run([python, "-c", imports], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-3000:]

    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    problems = [
        line
        for line in check.stdout.splitlines()
        if line and not line.startswith("No broken")
        and not any(expected in line for expected in lock.expected_conflicts)
    ]  # fmt: skip
    assert problems == [], check.stdout
    if profile in OVERLAY_PROFILES:
        assert lock.expected_conflicts  # the transformers overlay is really there
        assert any(e in check.stdout for e in lock.expected_conflicts), check.stdout
    else:
        assert lock.expected_conflicts == ()
        assert check.returncode == 0 and "No broken requirements" in check.stdout, check.stdout
