"""Every typed fact's parser against JSON cases (tests/probes/<fact>/*.json).

A case gives the lines the fact's remote script prints ("output", or "output_file": a
recorded file under tests/fixtures/recorded/, replayed unchanged) and "expect": parsed
fields (top-level fields of the fact's dataclass), each compared in full; sets and tuples
are compared as the lists JSON spells (sets sorted).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import autoglm_infra
from autoglm_infra.doctor.facts import DoctorProbeFact, ModelContentsFact
from autoglm_infra.pyinfra_ext.facts import GpuProbeFact, HostProfileFact
from autoglm_infra.pyinfra_ext.operations import SnapshotFact
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.docker.ops import DockerStateFact
from autoglm_infra.stages.model.ops import ModelSnapshotFact
from autoglm_infra.stages.python_env.ops import PythonEnvFact
from autoglm_infra.stages.service.ops import ServiceSnapshotFact

CASES = Path(__file__).parent
RECORDED = CASES.parent / "fixtures" / "recorded"

# folder -> the fact whose `process` (the parser the deploy uses) the cases feed
FACTS: dict[str, type[TypedFact[Any]]] = {
    "host_profile": HostProfileFact,
    "gpu_probe": GpuProbeFact,
    "snapshot": SnapshotFact,
    "docker_state": DockerStateFact,
    "python_env": PythonEnvFact,
    "service_snapshot": ServiceSnapshotFact,
    "model_snapshot": ModelSnapshotFact,
    "doctor_probe": DoctorProbeFact,
    "model_contents": ModelContentsFact,
}


def as_json(value: Any) -> Any:
    """A parsed value as JSON spells it (dataclasses as objects, sets as sorted lists)."""

    def default(o: Any) -> Any:
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(repr(o))

    plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return json.loads(json.dumps(plain, default=default))


def case_files() -> list[Path]:
    return sorted(CASES.glob("*/*.json"))


@pytest.mark.parametrize("path", case_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_case(path: Path) -> None:
    case = json.loads(path.read_text())
    if "output_file" in case:
        lines = (RECORDED / case["output_file"]).read_text().splitlines()
    else:
        lines = case["output"]
    parsed = as_json(FACTS[path.parent.name]().process(lines))
    assert case["expect"], f"{path}: expects nothing"
    unknown = set(case["expect"]) - set(parsed)
    assert not unknown, f"{path}: no such parsed fields {sorted(unknown)}"
    for key, expected in case["expect"].items():
        assert parsed[key] == expected, f"{case['description']}: {key}"


def typed_facts() -> dict[str, type[TypedFact[Any]]]:
    """Every TypedFact subclass in autoglm_infra, found by importing the modules."""
    found: dict[str, type[TypedFact[Any]]] = {}
    for module in pkgutil.walk_packages(autoglm_infra.__path__, "autoglm_infra."):
        name = module.name
        if not (name.endswith((".ops", ".facts")) or ".pyinfra_ext." in name):
            continue
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, type) and issubclass(value, TypedFact) and value is not TypedFact:
                found[value.__qualname__] = value
    return found


def test_every_typed_fact_has_cases() -> None:
    found = typed_facts()
    source = "\n".join(p.read_text() for p in Path(autoglm_infra.__file__).parent.rglob("*.py"))
    assert len(found) == source.count("(TypedFact["), sorted(found)
    for name, fact in found.items():
        folder = next((f for f, cls in FACTS.items() if cls is fact), None)
        assert folder, f"{name}: add it to FACTS with a folder of cases"
        assert list((CASES / folder).glob("*.json")), f"tests/probes/{folder}/ has no case"
