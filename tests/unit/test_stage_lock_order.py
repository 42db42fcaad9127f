"""A stage that changes the host takes the converge lock before it reads the host.

A run that had to wait for another run's lock must decide on what that run left, so the
host profile (and every other fact) is read only after the lock is held.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_host, ctx_state

from autoglm_infra.pyinfra_ext import stage as stage_module
from autoglm_infra.pyinfra_ext.run_key import host_key
from autoglm_infra.stages import deploy as full_deploy


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    monkeypatch.setattr(stage_module, "host_profile", lambda disk: seen.append("profile"))

    def lock(stage: str, wait_s: int) -> None:
        seen.append(f"lock {stage}")

    monkeypatch.setattr(stage_module, "take_converge_lock", lock)
    monkeypatch.setattr(full_deploy, "take_converge_lock", lock)
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    with ctx_state.use(state), ctx_host.use(inventory.get_host("@local")):
        yield seen


def test_a_stage_locks_before_it_reads_the_profile(calls: list[str]) -> None:
    @stage_module.stage("probe", 1)
    def probe(run: stage_module.StageRun) -> None:
        run.profile  # noqa: B018 - the read is the point

    probe()
    assert calls == ["lock probe", "profile"]


def test_a_read_only_stage_takes_no_lock(calls: list[str]) -> None:
    @stage_module.stage("look", 1, changes_host=False)
    def look(run: stage_module.StageRun) -> None:
        run.profile  # noqa: B018

    look()
    assert calls == ["profile"]


def test_the_complete_converge_locks_before_preflight_reads(
    calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    @stage_module.stage("preflight", 1, changes_host=False)
    def preflight(run: stage_module.StageRun) -> None:
        run.profile  # noqa: B018

    monkeypatch.setattr(full_deploy, "VENV_STAGES", (preflight,))
    full_deploy.converge()
    assert calls == ["lock preflight", "profile"]


def test_per_run_memory_is_keyed_by_the_state_not_pyinfras_proxy() -> None:
    """Callbacks get the State itself: a key from `id(pyinfra.state)` (the proxy) never
    matched them, and two runs in one process shared one key."""
    seen, states = [], []
    for _ in range(2):
        inventory = Inventory((["@local"], {}))
        states.append(State(inventory, Config()))  # both alive: their ids differ
        with ctx_state.use(states[-1]), ctx_host.use(inventory.get_host("@local")):
            assert host_key() == (id(states[-1]), "@local")
            seen.append(host_key())
    assert seen[0] != seen[1]
