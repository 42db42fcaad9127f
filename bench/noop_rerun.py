"""No-op re-run benchmark: converge one sandbox host, then time no-op re-runs against the floor.

    .venv/bin/python bench/noop_rerun.py [--runs 5]

The floor is the cheapest pyinfra run against the same host, `pyinfra INVENTORY exec -y --
true` (Python start-up, pyinfra's import, one SSH connection, one command). Floor, no-op
re-run and the re-run with TCP_NODELAY off (pyinfra's default) are interleaved run by run,
so a change in machine load hits all three alike. Prints the medians, the ratio no-op /
floor, where the time goes phase by phase (cut at pyinfra's progress lines), the remote
commands a re-run sends, and the ratio against the first converge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_world, converge, median, median_phases, timed_run

from autoglm_testbed.converge import pyinfra_bin
from autoglm_testbed.world import ROOT


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with bench_world("bnoop", net=3, hosts=1) as world:
        inventory = world.write_inventory(ROOT / ".sandbox" / "bnoop" / "inventory.py")
        first = converge(inventory)
        pyinfra = [str(pyinfra_bin()), str(inventory)]
        floor, noop, slow = [], [], []
        for _ in range(args.runs):
            floor.append(timed_run([*pyinfra, "exec", "-y", "--", "true"], hosts=1))
            noop.append(timed_run([*pyinfra, "deploys/full.py", "-y"], hosts=1))
            nagle = {"AUTOGLM_SSH_NODELAY": "0"}
            slow.append(timed_run([*pyinfra, "deploys/full.py", "-y"], nagle, hosts=1))
        counted = converge(inventory, debug=True)
        if counted.changed():
            print(f"re-run was not a no-op: {counted.changed()}")
            return 1
    floor_s, noop_s = median([r["total"] for r in floor]), median([r["total"] for r in noop])
    print(f"first converge:            {first.seconds:6.2f} s ({len(first.changed())} ops changed)")
    print(
        f"no-op re-run, median of {args.runs}: {noop_s:6.2f} s  (runs: "
        + ", ".join(f"{r['total']:.2f}" for r in noop)
        + ")"
    )
    print(f"floor (exec true), median: {floor_s:6.2f} s")
    print(f"ratio no-op / floor:       {noop_s / floor_s:6.2f}")
    print(f"  same, TCP_NODELAY off:   {median([r['total'] for r in slow]):6.2f} s")
    print("where the time goes (medians, s):      floor   no-op")
    floor_phases, noop_phases = median_phases(floor), median_phases(noop)
    for phase in noop_phases:
        print(f"  {phase:58} {floor_phases.get(phase, 0.0):5.2f}  {noop_phases[phase]:5.2f}")
    print(
        f"remote commands per re-run: {counted.remote_commands()} "
        "(besides the converge lock request, which carries the batched state reads "
        "and the smoke test)"
    )
    print(f"ratio re-run / first converge: {noop_s / first.seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
