"""Shared helpers for the benchmarks: a sandbox, a converge, a median."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
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


# pyinfra's progress lines that end each phase of a run, in order (on stderr)
PHASE_MARKS = (
    ("start-up: Python, pyinfra's import", "--> Loading config"),
    ("config, inventory, SSH connect", "--> Preparing "),
    ("collecting operations: our import, stage code, state reads", "--> Beginning operation run"),
    ("executing operations", "--> Results"),
)
EXIT_PHASE = "summary, disconnect, exit"


def _with_bytecode(environ: os._Environ[str]) -> dict[str, str]:
    """The environment with Python's bytecode cache on, as in a user's install: with
    PYTHONDONTWRITEBYTECODE set (some CI shells set it) every run compiles our package
    again, a few tenths of a second that no user pays."""
    return {k: v for k, v in environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed_run(
    argv: list[str], env: dict[str, str] | None = None, hosts: int | None = None
) -> dict[str, float]:
    """Run a pyinfra command; seconds per phase (PHASE_MARKS, then EXIT_PHASE) and 'total'.

    The phases are cut where pyinfra prints each progress line, read as it comes. With
    `hosts`, the run must have connected to exactly that many hosts: pyinfra only warns
    about a --limit that matches nothing and then times a run against no host."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**_with_bytecode(os.environ), **(env or {})},
    )
    assert proc.stderr is not None
    marks: dict[str, float] = {}
    tail: list[str] = []
    connected = 0
    for line in proc.stderr:
        tail = [*tail[-40:], line]
        connected += "Connected" in line
        for phase, mark in PHASE_MARKS:
            if phase not in marks and line.startswith(mark):
                marks[phase] = time.perf_counter()
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{''.join(tail)}")
    ended = time.perf_counter()
    if hosts is not None and connected != hosts:
        raise SystemExit(f"{' '.join(argv)} connected {connected} hosts, not {hosts}")
    phases, previous = {}, started
    for phase, _ in PHASE_MARKS:
        if phase in marks:
            phases[phase], previous = marks[phase] - previous, marks[phase]
    phases[EXIT_PHASE] = ended - previous
    phases["total"] = ended - started
    return phases


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: median([run.get(key, 0.0) for run in runs]) for key in runs[0]}
