"""Every operation's JSON cases (tests/ops/<operation>/*.json) on pyinfra's @fake connector.

A case gives the operation's "args" (snapshot objects as JSON, built into our types by the
table below; "_if" is the caller's gate) and what the host prints for reads at execution
time ("host_output": command substring -> lines), and expects either "noop": true (with
the reads, if any, in "commands") or the exact "commands" (or "commands_match", one
regex per command), the "uploads" (remote path -> text) and optionally "changed".
Commands are listed as run_op records them: "<upload PATH>", "<read SUBSTRING>".
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import autoglm_infra
from autoglm_infra.common.hash_lock import parse_lock
from autoglm_infra.common.snapshot import FileState, PackageState
from autoglm_infra.pyinfra_ext import operations as common_ops
from autoglm_infra.stages.docker import ops as docker_ops
from autoglm_infra.stages.expose import ops as expose_ops
from autoglm_infra.stages.model import ops as model_ops
from autoglm_infra.stages.model.state import ModelPlan
from autoglm_infra.stages.network import ops as network_ops
from autoglm_infra.stages.nvidia import ops as nvidia_ops
from autoglm_infra.stages.nvidia.apt_check import Expectation
from autoglm_infra.stages.python_env import ops as python_ops
from autoglm_infra.stages.python_env.venv import VenvState
from autoglm_infra.stages.service import ops as service_ops
from autoglm_infra.stages.verify import ops as verify_ops
from autoglm_testbed.fake_host import matches, run_op

CASES = Path(__file__).parent
Build = Callable[[Any], Any]


def file_state(value: dict[str, Any] | None) -> FileState | None:
    return None if value is None else FileState(**value)


def packages(value: dict[str, dict[str, Any]]) -> dict[str, PackageState]:
    return {name: PackageState(**p) for name, p in value.items()}


def pairs(value: list[list[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in value]


def triple(value: list[str] | None) -> tuple[str, str, str] | None:
    return None if value is None else (value[0], value[1], value[2])


def triples(value: dict[str, list[str]]) -> dict[str, tuple[str, str, str]]:
    return {k: (v[0], v[1], v[2]) for k, v in value.items()}


def expectation(value: dict[str, Any]) -> Expectation:
    return Expectation(**{**value, "packages": tuple(pairs(value["packages"]))})


def model_plan(value: dict[str, Any]) -> ModelPlan:
    lists = {k: tuple(v) for k, v in value.items() if isinstance(v, list)}
    return ModelPlan(**{**value, **lists})


def venv_state(value: dict[str, Any]) -> VenvState:
    dirs = value.get("dirs")
    return VenvState(**{**value, "user": triple(value.get("user")), "dirs": dirs and triples(dirs)})


# folder -> (operation, how to build the arguments JSON cannot spell)
OPERATIONS: dict[str, tuple[Any, dict[str, Build]]] = {
    "put_file": (common_ops.put_file, {"content": str.encode, "current": file_state}),
    "remove_file": (common_ops.remove_file, {"current": file_state}),
    "apt_pinned": (
        common_ops.apt_pinned,
        {"packages": pairs, "installed": packages, "first": pairs},
    ),
    "apt_present": (common_ops.apt_present, {"installed": packages}),
    "ensure_image": (docker_ops.ensure_image, {}),
    "ensure_volume": (docker_ops.ensure_volume, {}),
    "generate_env_file": (docker_ops.generate_env_file, {}),
    "generate_file": (docker_ops.generate_file, {}),
    "require_dir": (docker_ops.require_dir, {}),
    "enable_unit": (docker_ops.enable_unit, {}),
    "restart_unit": (docker_ops.restart_unit, {}),
    "model_pull": (model_ops.model_pull, {"plan": model_plan}),
    "remove_paths": (network_ops.remove_paths, {}),
    "move_files": (network_ops.move_files, {"moves": pairs}),
    "driver_reboot": (nvidia_ops.driver_reboot, {"current_marker": file_state}),
    "verify_driver": (nvidia_ops.verify_driver, {}),
    "kernel_headers": (nvidia_ops.kernel_headers, {}),
    "persistence_mode": (nvidia_ops.persistence_mode, {"enabled": file_state}),
    "nvidia_apt_check": (nvidia_ops.nvidia_apt_check, {"expect": expectation}),
    "service_user": (python_ops.service_user, {"current": triple}),
    "owned_dirs": (python_ops.owned_dirs, {"current": triples}),
    "venv_module": (python_ops.venv_module, {}),
    "locked_venv": (
        python_ops.locked_venv,
        {"lock": lambda v: parse_lock(v["text"], v["profile"]), "state": venv_state},
    ),
    "directory": (service_ops.directory, {}),
    "generate_api_key": (service_ops.generate_api_key, {}),
    "run_service": (service_ops.run_service, {}),
    "smoke_test": (verify_ops.smoke_test, {}),
    "derive_engine_auth": (expose_ops.derive_engine_auth, {}),
    "start_front": (expose_ops.start_front, {}),
    "withdraw_front": (expose_ops.withdraw_front, {}),
}


def case_files() -> list[Path]:
    return sorted(p for p in CASES.glob("*/*.json"))


@pytest.mark.parametrize("path", case_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_case(path: Path) -> None:
    case = json.loads(path.read_text())
    op, build = OPERATIONS[path.parent.name]
    args = {k: build[k](v) if k in build else v for k, v in case["args"].items()}
    if "_if" in args:  # the gate a caller passes (pyinfra's global argument)
        args["_if"] = [lambda: case["args"]["_if"]]
    run = run_op(op, host_output=case.get("host_output"), **args)

    if case.get("noop"):
        # a check may read the host (its reads are listed) but changes nothing
        reads = case.get("commands", [])
        assert all(c.startswith("<read ") for c in reads), f"{path}: a noop lists only reads"
        assert (run.changed, run.commands, run.uploads) == (False, reads, {}), case["description"]
        return
    if "commands_match" in case:
        assert matches(case["commands_match"], run.commands), run.commands
    else:
        assert run.commands == case["commands"], case["description"]
    assert run.uploads == case.get("uploads", {}), case["description"]
    assert run.changed == case.get("changed", True), case["description"]


def test_every_case_names_its_outcome() -> None:
    for path in case_files():
        case = json.loads(path.read_text())
        outcomes = [k for k in ("commands", "commands_match") if k in case]
        assert case.get("description") and (case.get("noop") or len(outcomes) == 1), path
        assert path.parent.name in OPERATIONS, f"{path}: no operation named {path.parent.name}"


def pyinfra_operations() -> dict[str, Any]:
    """Every @operation in autoglm_infra: imported from the modules, not from the table."""
    found: dict[str, Any] = {}
    for module in pkgutil.walk_packages(autoglm_infra.__path__, "autoglm_infra."):
        name = module.name
        if not (name.endswith(".ops") or ".pyinfra_ext." in name or name.endswith(".facts")):
            continue
        for value in vars(importlib.import_module(name)).values():
            inner = getattr(value, "_inner", None)
            if callable(value) and inner is not None and inner.__module__ == name:
                found[inner.__name__] = value
    return found


def test_every_operation_has_a_noop_and_a_change_case() -> None:
    found = pyinfra_operations()
    source = "\n".join(p.read_text() for p in Path(autoglm_infra.__file__).parent.rglob("*.py"))
    assert len(found) == len(re.findall(r"^@operation\(", source, re.M)), sorted(found)
    for name, op in found.items():
        assert OPERATIONS.get(name, (None,))[0] is op, f"{name}: add it to OPERATIONS"
        kinds = {
            json.loads(p.read_text()).get("noop", False) for p in (CASES / name).glob("*.json")
        }
        assert kinds == {True, False}, f"tests/ops/{name}/ needs a no-op case and a change case"


def test_every_operation_documents_its_arguments_and_an_example() -> None:
    for name, op in pyinfra_operations().items():
        doc = op._inner.__doc__ or ""
        listed = {
            a for group in re.findall(r"^\s*\+ ([\w/]+):", doc, re.M) for a in group.split("/")
        }
        params = set(inspect.signature(op._inner).parameters)
        assert params <= listed, f"{name}: no '+ arg:' line for {sorted(params - listed)}"
        assert "**Example:**" in doc and f"{name}(" in doc, f"{name}: no example"
