"""Run pyinfra as users do (the CLI, --json) and read what changed.

Used by the demo, the idempotence tests and the benchmarks, so all three measure the
same thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ConvergeResult:
    returncode: int
    seconds: float
    report: dict[str, Any]  # pyinfra's --json document ({} when it printed none)
    stderr: str

    @property
    def operations(self) -> list[dict[str, Any]]:
        results = self.report.get("results", {})
        ops = results.get("operations", [])
        return ops if isinstance(ops, list) else []

    def changed(self) -> list[str]:
        """'op name on host, host' for every operation that changed something."""
        return [
            f"{op['name']} on {', '.join(op['success'])}"
            for op in self.operations
            if op.get("success")
        ]

    def failed(self) -> list[str]:
        return [
            f"{op['name']} on {', '.join(map(str, op['error']))}"
            for op in self.operations
            if op.get("error")
        ]

    def remote_commands(self) -> int:
        """Commands sent to hosts, counted from pyinfra's --debug log (needs debug=True)."""
        return self.stderr.count("Running command on ")


def pyinfra_bin() -> str:
    return str(Path(sys.executable).with_name("pyinfra"))


def run_pyinfra(
    inventory: str | Path,
    deploy: str | Path = "deploys/full.py",
    *extra: str,
    debug: bool = False,
    timeout: float = 3600,
    env: dict[str, str] | None = None,
    pyinfra: str | Path | None = None,
    cwd: Path = ROOT,
) -> ConvergeResult:
    """`pyinfra INVENTORY DEPLOY -y --json` from the project root (or `cwd`)."""
    argv = [str(pyinfra or pyinfra_bin()), str(inventory), str(deploy), "-y", "--json", *extra]
    if debug:
        argv.append("--debug")
    started = time.perf_counter()
    proc = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    seconds = time.perf_counter() - started
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    return ConvergeResult(proc.returncode, seconds, report, proc.stderr)


def describe_failure(result: ConvergeResult) -> str:
    tail = "\n".join(result.stderr.splitlines()[-40:])
    return f"pyinfra exited {result.returncode}; failed ops: {result.failed()}\n{tail}"


class NotIdempotent(AssertionError):
    pass


def converge_twice(
    inventory: str | Path, deploy: str | Path = "deploys/full.py", *extra: str
) -> tuple[ConvergeResult, ConvergeResult]:
    """Converge twice; raise NotIdempotent naming every operation the 2nd run changed."""
    first = run_pyinfra(inventory, deploy, *extra)
    if first.returncode != 0:
        raise AssertionError(describe_failure(first))
    second = run_pyinfra(inventory, deploy, *extra)
    if second.returncode != 0:
        raise AssertionError(describe_failure(second))
    if second.changed():
        raise NotIdempotent("second converge changed: " + "; ".join(second.changed()))
    return first, second
