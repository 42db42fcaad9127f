"""Stages as functions: one prelude, one refusal path, and what each stage queued to change.

A stage is `@stage("python env", 4)` on `def python_env(run: StageRun) -> None`. Called with no
argument (a deploy file running one stage) it uses the host's run in this invocation;
`full.py` passes one `StageRun` through every stage, so the service stage sees what the
python env and model stages queued in this very run. A stage refuses a host by
raising `StageRefused` (the pure core's ValueErrors are turned into it where they are
caught): pyinfra prints it without a traceback, named after the stage and the host. Such an
error fails that host only (pyinfra_ext/fleet.py): the other hosts go on, and a host that
failed skips its later stages.

Not pyinfra's `@deploy`: it prefixes every operation name with the deploy's, and our
operation names already say their stage ("Python env: venv from lock cpu").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import OperationMeta

from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.config.schema import Settings
from autoglm_infra.pyinfra_ext.converge_lock import take_converge_lock
from autoglm_infra.pyinfra_ext.fleet import host_has_failed, isolated
from autoglm_infra.pyinfra_ext.run_key import host_key
from autoglm_infra.pyinfra_ext.settings import host_profile, host_settings


class StageRefused(PyinfraError):
    """A host this stage must not touch; the message says why and what to do."""


@dataclass
class StageRun:
    """One converge of the current host: its settings, profile and queued changes."""

    settings: Settings
    _queued: list[tuple[str, str, OperationMeta]] = field(default_factory=list)
    stage: str = ""

    @property
    def profile(self) -> HostProfile:
        """The host's profile, read on first use: after the stage took the converge lock,
        so a run that waited reads what the previous run left."""
        return host_profile(self.settings.model_dir)

    def record(self, what: str, meta: OperationMeta) -> OperationMeta:
        """Remember that the running stage queued `meta` (described as `what`)."""
        self._queued.append((self.stage, what, meta))
        return meta

    def queued_changes(self, *stages: str) -> list[str]:
        """'stage: what' for each recorded operation of `stages` that will change the host."""
        return [
            f"{stage}: {what}"
            for stage, what, meta in self._queued
            if stage in stages and meta.will_change
        ]


# One run per pyinfra State (one per CLI run, several in tests) and host: stages started
# from separate deploy files of one command (`pyinfra INV a.py b.py`) share it too.
_runs: dict[tuple[int, str], StageRun] = {}


def current_run() -> StageRun:
    """The current host's run in this pyinfra invocation (created on first use)."""
    key = host_key()
    if key not in _runs:
        _runs[key] = StageRun(host_settings())
    return _runs[key]


def stage(
    title: str, position: int, changes_host: bool = True
) -> Callable[[Callable[[StageRun], None]], Callable[..., None]]:
    """Make `func` a stage called `title` (as it names itself in refusals). A stage that
    changes the host first takes its converge lock, before it reads the host's state.

    `position` is the stage's place in the complete converge. pyinfra identifies an
    operation by the line numbers of its call stack; stages called from one loop share
    those lines up to their own files, so hosts running different stage lists (venv and
    docker mode) could give two different operations one identity and pyinfra stops with
    "Cycle detected in operation ordering DAG". The position, pushed as a pyinfra loop
    position, makes every operation's identity its stage's, whichever stages run.
    """

    def decorate(func: Callable[[StageRun], None]) -> Callable[..., None]:
        @functools.wraps(func)
        def run_stage(run: StageRun | None = None) -> None:
            if host_has_failed():
                return  # an earlier stage failed this host: the later ones would build on it
            run = run or current_run()
            outer, run.stage = run.stage, title
            host.loop_position.append(position)
            try:
                with isolated(title):  # an error fails this host, not the whole run
                    try:
                        if changes_host:
                            take_converge_lock(title, run.settings.converge_lock_wait)
                        func(run)
                    except StageRefused as exc:  # printed without a traceback
                        raise PyinfraError(f"{title} stage refused {host.name}: {exc}") from None
            finally:
                host.loop_position.pop()
                run.stage = outer

        return run_stage

    return decorate
