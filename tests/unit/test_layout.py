"""The layout holds: one folder per stage, a pure core, and a wheel that carries its data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = (
    "preflight", "network", "nvidia", "python_env", "model", "service", "docker", "expose",
    "verify",
)  # fmt: skip
RUFF = Path(sys.executable).with_name("ruff")


def banned(path: str, code: str) -> list[str]:
    """TID251 findings of the project's own ruff config for `code` placed at `path`."""
    proc = subprocess.run(
        [RUFF, "check", "--select", "TID251", "--output-format", "concise",
         "--stdin-filename", path, "-"],
        input=code, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    return [line for line in proc.stdout.splitlines() if "TID251" in line]


@pytest.mark.parametrize(
    "path",
    ["autoglm_infra/stages/model/state.py", "autoglm_infra/common/snapshot.py",
     "autoglm_infra/stack/resolver.py", "autoglm_infra/doctor/table.py"],
)  # fmt: skip
@pytest.mark.parametrize("code", ["from pyinfra import host\n", "import pyinfra.api.facts\n"])
def test_the_pure_core_may_not_import_pyinfra(path: str, code: str) -> None:
    assert banned(path, code), f"{path} imported pyinfra and the lint let it pass"


@pytest.mark.parametrize(
    "path",
    ["autoglm_infra/stages/model/ops.py", "autoglm_infra/stages/model/deploy.py",
     "autoglm_infra/pyinfra_ext/operations.py", "autoglm_infra/doctor/facts.py",
     "deploys/model.py", "autoglm_testbed/converge.py"],
)  # fmt: skip
def test_pyinfra_glue_may_import_pyinfra(path: str) -> None:
    assert banned(path, "from pyinfra import host\n") == []


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_one_folder_with_a_thin_entry_point(stage: str) -> None:
    folder = ROOT / "autoglm_infra" / "stages" / stage
    assert ((folder / "deploy.py").is_file() and (folder / "ops.py").is_file()) or stage in {
        "preflight"  # read-only: its deploy needs no operation of its own
    }
    entry = (ROOT / "deploys" / f"{stage}.py").read_text()
    assert f"from autoglm_infra.stages.{stage}.deploy import {stage}" in entry
    code = [line for line in entry.split('"""')[-1].splitlines() if line.strip()]
    assert len(code) == 2, f"deploys/{stage}.py should only call its stage: {code}"


def test_the_wheel_carries_templates_and_data_but_not_the_testbed(tmp_path: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    subprocess.run(
        [uv, "build", "-q", "--wheel", "-o", tmp_path, ROOT],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("autoglm_infra-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "autoglm_infra/stack/nvidia_stack.yaml",
        "autoglm_infra/stages/nvidia/nvidia_repo_packages.yaml",
        "autoglm_infra/stages/docker/templates/Dockerfile.j2",
        "autoglm_infra/stages/docker/templates/autoglm-docker.service.j2",
        "autoglm_infra/stages/service/templates/autoglm-serve.service.j2",
        "autoglm_infra/stages/service/templates/autoglm-health-gate.py",
        "autoglm_infra/locks/cpu.txt",
        "autoglm_infra/host_tools/model_fetch.py",
        "autoglm_infra/py.typed",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}"
    assert not [n for n in names if n.startswith("autoglm_testbed/")]
