"""Rolling upgrade: converge a fleet in health-gated batches (python -m autoglm_infra.rollout).

    python -m autoglm_infra.rollout inventories/prod.py deploys/full.py --batch-size 2

A canary batch of one host first, then batches of --batch-size hosts, in inventory order.
Each batch is one `pyinfra INVENTORY DEPLOY -y --limit ...` run; a host passes when that
run converged it and the health gate (deploys/verify.py: /health, the served model and a
real chat completion) passes on it afterwards. Once more than --max-failures hosts failed,
the rollout stops: later batches are not reached, so they keep their old state. The
batching and the decisions are pure (autoglm_infra/common/fleet.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from pyinfra.api import State
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_state

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
    plan_batches,
    select_hosts,
)
from autoglm_infra.pyinfra_ext.fleet import SUMMARY_ENV

DEFAULT_GATE = "deploys/verify.py"


def load_fleet(inventory: str) -> tuple[list[str], dict[str, list[str]]]:
    """Host names in inventory order and the groups; FleetInputError on duplicate hosts."""
    if not Path(inventory).is_file():
        raise FleetInputError(f"inventory {inventory}: no such file; nothing was changed")
    # Imported here: importing pyinfra_cli monkey-patches the whole process with gevent
    # (sockets, ssl), which the rollout's own process can afford and a process that merely
    # imports this module (a test run, a library user) cannot.
    from pyinfra_cli.exceptions import CliError
    from pyinfra_cli.inventory import _get_groups_from_filename, make_inventory

    try:
        with ctx_state.use(State()):  # pyinfra's loader records the file it runs there
            raw = _get_groups_from_filename(inventory)
            inv = make_inventory(inventory, cwd=os.getcwd())
    except (CliError, PyinfraError) as exc:
        raise FleetInputError(f"inventory {inventory}: {exc}; nothing was changed") from None
    hosts = {h.name: h for h in inv}
    entries = []
    for group, members in raw.items():
        for item in members[0] if isinstance(members, tuple) else members:
            name = item[0] if isinstance(item, tuple) else item
            data = hosts[name].data if name in hosts else None
            address = str(data.get("ssh_hostname") or name) if data else name
            port = data.get("ssh_port") if data else None
            entries.append(InventoryEntry(group, name, f"{address}:{port or 22}"))
    if problems := duplicate_problems(entries):
        raise FleetInputError(
            f"inventory {inventory}: " + "; ".join(problems) + "; nothing was changed"
        )
    groups = {name: [h.name for h in members] for name, members in inv.groups.items()}
    # each batch is run with `--limit NAME`, which pyinfra reads as a group or a glob
    if ambiguous := [n for n in hosts if n in groups or any(c in n for c in "*?[")]:
        raise FleetInputError(
            f"inventory {inventory}: host name(s) {', '.join(ambiguous)} would select more "
            "than one host with --limit (a group of that name, or glob characters): rename "
            "them; nothing was changed"
        )
    return list(hosts), groups


def run_pyinfra(
    pyinfra: str, inventory: str, deploy: str, hosts: Sequence[str], extra: Sequence[str]
) -> tuple[int, list[HostOutcome]]:
    """One pyinfra run against `hosts`; its output goes to ours, the outcomes come back."""
    limits = [arg for h in hosts for arg in ("--limit", h)]
    tail: deque[str] = deque(maxlen=40)
    unreachable: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="autoglm-rollout-") as tmp:
        summary = Path(tmp, "summary.json")
        with subprocess.Popen(
            [pyinfra, inventory, deploy, "-y", *limits, *extra],
            env={**os.environ, SUMMARY_ENV: str(summary)},
            stdout=sys.stderr,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stderr is not None
            for line in proc.stderr:  # shown as it comes; the tail names a run-wide error
                sys.stderr.write(line)
                tail.append(line.strip())
                if "Could not connect" in line:  # all unreachable: pyinfra stops before a stage
                    unreachable.update({h: one_line(line) for h in hosts if f"[{h}]" in line})
        written = summary.read_text() if summary.exists() else "[]"
        found = {o.host: o for o in outcomes_from_json(written)}
    lines = [ln for ln in tail if ln]
    error = next((ln for ln in lines if ln.startswith("--> pyinfra error")), None)
    error = error or (lines[-1] if lines else "no output")
    for h, why in unreachable.items():
        found.setdefault(h, HostOutcome(h, "unreachable", error=why))
    for h in hosts:  # a run that ended before any stage (bad configuration) names no host
        found.setdefault(
            h, HostOutcome(h, "failed", stage=Path(deploy).stem, error=one_line(error))
        )
    return proc.returncode, [found[h] for h in hosts]


def gate(
    pyinfra: str,
    inventory: str,
    gate_deploy: str,
    results: list[HostOutcome],
    extra: Sequence[str],
) -> list[HostOutcome]:
    """The health gate on the batch's converged hosts: a failure there fails the host."""
    passed = [o.host for o in results if o.ok]
    if not passed:
        return results
    print(f"--> Health gate ({gate_deploy}) on {', '.join(passed)}", file=sys.stderr)
    _, checked = run_pyinfra(pyinfra, inventory, gate_deploy, passed, extra)
    verdict = {o.host: o for o in checked}
    return [
        o
        if not o.ok or verdict[o.host].ok
        else HostOutcome(o.host, "failed", stage="health gate", error=verdict[o.host].describe())
        for o in results
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m autoglm_infra.rollout",
        description="Converge a fleet in health-gated batches: a canary of one host, then "
        "batches of --batch-size; stop once more than --max-failures hosts failed.",
        epilog="Arguments after -- go to every pyinfra run (e.g. -- --data serve_port=8001).",
    )
    parser.add_argument("inventory")
    parser.add_argument("deploy", nargs="?", default="deploys/full.py")
    parser.add_argument("--batch-size", type=int, required=True, help="hosts per batch")
    parser.add_argument(
        "--max-failures", type=int, default=0, help="failed hosts tolerated (default 0)"
    )
    parser.add_argument("--limit", action="append", default=[], help="host or group (repeat)")
    parser.add_argument(
        "--gate-deploy", default=DEFAULT_GATE, help=f"health gate deploy (default {DEFAULT_GATE})"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    try:
        for path, flag in ((args.deploy, "deploy"), (args.gate_deploy, "--gate-deploy")):
            if not Path(path).is_file():
                raise FleetInputError(f"{flag} {path}: no such file; nothing was changed")
        check_max_failures(args.max_failures)
        hosts, groups = load_fleet(args.inventory)
        rollout = Rollout(
            plan_batches(select_hosts(hosts, groups, args.limit), args.batch_size),
            args.max_failures,
        )
    except FleetInputError as exc:
        print(f"--> rollout error: {exc}", file=sys.stderr)
        return 2
    for number, batch in enumerate(rollout.batches, 1):
        kind = "canary" if number == 1 else f"batch {number - 1}"
        print(
            f"--> Rollout {kind} ({number}/{len(rollout.batches)}): {', '.join(batch)}",
            file=sys.stderr,
        )
        _, results = run_pyinfra(pyinfra, args.inventory, args.deploy, batch, args.extra)
        results = gate(pyinfra, args.inventory, args.gate_deploy, results, args.extra)
        rollout.record(results)
        print(format_summary(results, f"Rollout {kind} result"), file=sys.stderr)
        if not rollout.decide():
            break
    print("\n" + rollout.report(), file=sys.stderr)
    return 1 if rollout.failed() else 0
