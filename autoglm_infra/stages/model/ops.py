"""The model stage's fact (one remote command) and its pull operation."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, operation

from autoglm_infra.common.snapshot import Snapshot, parse_snapshot, snapshot_script
from autoglm_infra.pyinfra_ext.converge_lock import tie_to_controller
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.model.state import (
    ModelDirState,
    ModelPlan,
    Verify,
    helper_command,
    listing_script,
    parse_listing,
    split_lines,
)


@dataclass(frozen=True)
class ModelSnapshot:
    control: Snapshot  # helper, plan, token files (sha256) and python3 on PATH
    model: ModelDirState  # size/mtime/inode of every model file, and the stamps


class ModelSnapshotFact(TypedFact[ModelSnapshot]):
    """Control files plus a stat-only listing of model_dir, in one command; reads no weights."""

    def command(self, model_dir: str, files: Sequence[str] = ()) -> str:
        control = snapshot_script(list(files), [], commands=["python3"])
        return f"{control}; {listing_script(model_dir)}; true"

    def process(self, output: list[str]) -> ModelSnapshot:
        mine, rest = split_lines(output)
        return ModelSnapshot(parse_snapshot(rest), parse_listing(mine))


@operation()
def model_pull(
    model_dir: str, plan: ModelPlan, verify: Verify, prune: bool
) -> Generator[Any, None, None]:
    """Run the host helper when the listing says a file is missing, changed or unverified.

    + model_dir: where the model lives on the host
    + plan: from model_state.plan_model (decided without reading any file)
    + verify: 'full' re-hashes every file (always runs); 'stamp' trusts valid stamps
    + prune: also remove files that are not in the lock

    **Example:**

    .. code:: python

        model_pull(name="Model: pull", model_dir="/srv/m", plan=plan, verify="stamp",
                   prune=False)
    """
    if not plan.run_helper:
        host.noop(plan.reason)
        return
    yield StringCommand(tie_to_controller(helper_command(model_dir, verify, prune)))
