"""Fleet runs: batches of a rolling upgrade, when it stops, and the per-host summaries."""

from __future__ import annotations

import pytest

from autoglm_infra.common.fleet import (
    FleetInputError,
    HostOutcome,
    InventoryEntry,
    Rollout,
    check_max_failures,
    duplicate_problems,
    format_summary,
    one_line,
    outcomes_from_json,
    outcomes_to_json,
    plan_batches,
    select_hosts,
    should_stop,
)

FLEET = ["a", "b", "c", "d", "e"]


def test_a_canary_of_one_then_batches_of_the_configured_size() -> None:
    assert plan_batches(FLEET, 2) == [["a"], ["b", "c"], ["d", "e"]]
    assert plan_batches(FLEET, 3) == [["a"], ["b", "c", "d"], ["e"]]
    assert plan_batches(FLEET, 5) == [["a"], ["b", "c", "d", "e"]]
    assert plan_batches(["a"], 1) == [["a"]]


@pytest.mark.parametrize(
    ("size", "says"),
    [(0, "--batch-size 0: a batch needs at least 1 host; give 1 to 5"),
     (-1, "--batch-size -1"),
     (6, "--batch-size 6 is larger than the fleet (5 hosts: a, b, c, d, e): give 1 to 5")],
)  # fmt: skip
def test_a_batch_size_of_zero_or_beyond_the_fleet_is_refused(size: int, says: str) -> None:
    with pytest.raises(FleetInputError, match="nothing was changed") as info:
        plan_batches(FLEET, size)
    assert says in str(info.value)


def test_an_empty_or_doubled_host_list_is_refused() -> None:
    with pytest.raises(FleetInputError, match="selects no host"):
        plan_batches([], 1)
    with pytest.raises(FleetInputError, match="hosts listed twice: b"):
        plan_batches(["a", "b", "b"], 1)


def test_max_failures_must_not_be_negative() -> None:
    check_max_failures(0)
    with pytest.raises(FleetInputError, match="--max-failures -1: give 0 or more"):
        check_max_failures(-1)


def test_the_rollout_stops_only_when_more_than_the_allowed_hosts_failed() -> None:
    assert not should_stop(0, 0)
    assert should_stop(1, 0)
    assert not should_stop(1, 1)
    assert should_stop(2, 1)


def test_duplicate_names_in_a_group_and_two_names_for_one_address() -> None:
    entries = [
        InventoryEntry("gpu", "a", "10.0.0.1:22"),
        InventoryEntry("gpu", "b", "10.0.0.2:22"),
        InventoryEntry("gpu", "a", "10.0.0.1:22"),
        InventoryEntry("gpu", "c", "10.0.0.2:22"),
        InventoryEntry("east", "a", "10.0.0.1:22"),  # one host in two groups is fine
    ]
    assert duplicate_problems(entries) == [
        "host a is listed twice in group gpu: keep one entry (pyinfra would silently use "
        "only one entry's data)",
        "hosts b and c have the same address 10.0.0.2:22: one machine would be converged "
        "twice at once; remove one of them",
    ]
    assert duplicate_problems(entries[:2] + entries[4:]) == []


def test_limit_selects_by_group_or_glob_and_refuses_a_pattern_matching_nothing() -> None:
    groups = {"east": ["b", "d"], "all": FLEET}
    assert select_hosts(FLEET, groups, []) == FLEET
    assert select_hosts(FLEET, groups, ["east"]) == ["b", "d"]
    assert select_hosts(FLEET, groups, ["e*", "a"]) == ["a", "e"]
    with pytest.raises(FleetInputError, match="--limit west matches no host or group") as info:
        select_hosts(FLEET, groups, ["east", "west"])
    assert "nothing was changed" in str(info.value)


def test_one_line_joins_and_cuts_long_errors() -> None:
    assert one_line("refused:\n  - too little disk\n  - no GPU") == (
        "refused: - too little disk - no GPU"
    )
    assert one_line("x" * 400, width=20) == "x" * 17 + "..."


def test_the_per_host_summary_names_each_outcome() -> None:
    outcomes = [
        HostOutcome("gpu-01", "converged", changes=42),
        HostOutcome("gpu-02", "failed", stage="preflight", error="too little disk"),
        HostOutcome("gpu-003", "unreachable", error="no SSH connection"),
        HostOutcome("gpu-04", "converged", changes=1),
    ]
    assert format_summary(outcomes).splitlines() == [
        "--> Per-host summary:",
        "    gpu-01:  converged with 42 changes",
        "    gpu-02:  failed at stage preflight: too little disk",
        "    gpu-003: unreachable: no SSH connection",
        "    gpu-04:  converged with 1 change",
    ]
    assert outcomes_from_json(outcomes_to_json(outcomes)) == outcomes


def test_a_rollout_that_stops_names_who_is_on_the_new_state_and_who_is_not() -> None:
    rollout = Rollout(plan_batches(FLEET, 2), max_failures=0)
    rollout.record([HostOutcome("a", "converged", changes=3)])
    assert rollout.decide()
    rollout.record(
        [HostOutcome("b", "converged", changes=3),
         HostOutcome("c", "failed", stage="health gate", error="smoke test failed")]
    )  # fmt: skip
    assert not rollout.decide()
    report = rollout.report().splitlines()
    assert report == [
        "--> Rollout summary:",
        "    a: converged with 3 changes",
        "    b: converged with 3 changes",
        "    c: failed at stage health gate: smoke test failed",
        "    d: not reached: left as it was",
        "    e: not reached: left as it was",
        "    rollout stopped: 1 host(s) failed, more than --max-failures 0",
        "    on the new state: a, b",
        "    not on the new state: c, d, e",
    ]


def test_a_rollout_within_max_failures_goes_on_to_the_end() -> None:
    rollout = Rollout(plan_batches(["a", "b", "c"], 1), max_failures=1)
    for host, ok in (("a", True), ("b", False), ("c", True)):
        rollout.record([HostOutcome(host, "converged" if ok else "unreachable")])
        assert rollout.decide()
    assert rollout.report().splitlines()[-3:] == [
        "    rollout finished",
        "    on the new state: a, c",
        "    not on the new state: b",
    ]


def test_a_plain_run_refuses_two_inventory_names_for_one_address() -> None:
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host, ctx_state

    from autoglm_infra.pyinfra_ext.settings import InvalidConfiguration, host_settings

    inventory = Inventory(
        ([("gpu-01", {"ssh_hostname": "192.0.2.7"}), ("gpu-02", {"ssh_hostname": "192.0.2.7"})],
         {"nvidia_require_gpu": False}),
    )  # fmt: skip
    state = State(inventory, Config())
    with (
        ctx_state.use(state),
        ctx_host.use(inventory.get_host("gpu-01")),
        pytest.raises(InvalidConfiguration) as info,
    ):
        host_settings()
    assert str(info.value) == (
        "inventory: hosts gpu-01 and gpu-02 have the same address 192.0.2.7:22: one machine "
        "would be converged twice at once; remove one of them; nothing was changed on any host"
    )


def test_a_failed_host_is_recorded_as_itself_not_as_pyinfras_proxy() -> None:
    """pyinfra's `host` is a proxy that becomes whichever host is current when read: a
    failed-host set holding it named the wrong host (or none) once another was current."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host, ctx_state

    from autoglm_infra.pyinfra_ext import fleet

    inventory = Inventory((["@local", "broken"], {}))
    state = State(inventory, Config())
    for each in inventory:
        state.activated_hosts.add(each)
        state.active_hosts.add(each)
    broken, healthy = inventory.get_host("broken"), inventory.get_host("@local")
    with ctx_state.use(state), ctx_host.use(broken):
        fleet.fail_current_host("preflight", "too little disk")
    assert state.failed_hosts == {broken} and healthy in state.active_hosts
    assert all(type(h).__name__ == "Host" for h in state.failed_hosts)
