"""The read-only deploys run with pyinfra's @local connector on the machine running the
tests, as an operator runs them on the GPU host itself: they print their table and end
without a Python traceback, whatever the machine has (here usually no GPU, no NVIDIA
package, no model, no service user).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoglm_infra.doctor import facts as doctor_facts
from autoglm_infra.pyinfra_ext import facts, operations
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.docker import ops as docker_ops
from autoglm_infra.stages.model import ops as model_ops
from autoglm_infra.stages.python_env import ops as python_ops
from autoglm_infra.stages.service import ops as service_ops

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def run_local(deploy: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYINFRA, "@local", f"deploys/{deploy}", "-y"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("deploy", ["gpu_check.py", "doctor.py", "preflight.py"])
def test_read_only_deploys_print_a_table_without_traceback_at_local(deploy: str) -> None:
    result = run_local(deploy)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert "An exception occurred" not in output, output[-3000:]
    if deploy != "preflight.py":
        assert "status  evidence / fix" in output, output[-3000:]
    if deploy == "doctor.py":
        rows = {
            line.split()[0] + " " + line.split()[1]: line
            for line in output.splitlines()
            if line.startswith("  ") and len(line.split()) > 2
        }
        secure_boot = rows.get("secure boot", "")
        assert secure_boot, "the doctor always has a secure boot row"
        assert not (" ok " in secure_boot and "unknown" in secure_boot), secure_boot
        if "AutoGLM-Phone-9B does not exist" in output:  # the usual test machine
            for name in ("model access", "context length"):
                assert " ok " not in rows.get(name, ""), rows.get(name)


def test_every_fact_is_typed_when_its_command_prints_nothing() -> None:
    """pyinfra hands a fact whose command printed nothing (or failed) as default()."""
    modules = (docker_ops, doctor_facts, facts, model_ops, operations, python_ops, service_ops)
    found = [
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, TypedFact) and value is not TypedFact
    ]
    assert len(found) >= 8
    for fact in found:
        empty = fact().default()
        assert empty is not None, fact.__name__
        assert empty == fact().process([]), fact.__name__
