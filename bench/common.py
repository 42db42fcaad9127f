"""Shared helpers for the benchmarks: a sandbox, a converge, a median."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autoglm_testbed.converge import ConvergeResult, describe_failure, run_pyinfra
from autoglm_testbed.hosts import HostSpec, Sandbox
from autoglm_testbed.world import ROOT, World, boot_world


@contextmanager
def bench_world(name: str, net: int, hosts: int) -> Iterator[World]:
    """Fresh hosts for one benchmark, removed afterwards whatever happens."""
    sandbox = Sandbox(name, net=net, state_dir=ROOT / ".sandbox" / name)
    sandbox.down()  # leftovers of an interrupted run
    world = None
    try:
        world = boot_world(sandbox, [HostSpec() for _ in range(hosts)], reuse=False)
        yield world
    finally:
        if world is not None:
            world.stop()
        sandbox.down()


def converge(
    inventory: Path, *extra: str, debug: bool = False, env: dict[str, str] | None = None
) -> ConvergeResult:
    result = run_pyinfra(inventory, "deploys/full.py", *extra, debug=debug, env=env)
    if result.returncode != 0:
        raise SystemExit(describe_failure(result))
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)
