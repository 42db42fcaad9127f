"""What a stage queued to change on the current host, for later stages of the same run.

The service stage restarts the engine when the venv or the model changes in this very run.
Stages record the operations that matter here instead of later stages matching operation
names: pyinfra names them differently on the command line and inside `local.include`.
"""

from __future__ import annotations

from pyinfra import host, state
from pyinfra.api.operation import OperationMeta

PYTHON_ENV = "python env"
MODEL = "model"

# Per pyinfra State (one per run, several in tests) and host.
_queued: dict[tuple[int, str], list[tuple[str, str, OperationMeta]]] = {}


def record(stage: str, what: str, meta: OperationMeta) -> OperationMeta:
    """Remember that `stage` queued the operation `meta` (described as `what`)."""
    _queued.setdefault((id(state), host.name), []).append((stage, what, meta))
    return meta


def queued_changes(*stages: str) -> list[str]:
    """'stage: what' for each recorded operation of `stages` that will change the host."""
    return [
        f"{stage}: {what}"
        for stage, what, meta in _queued.get((id(state), host.name), [])
        if stage in stages and meta.will_change
    ]
