"""No-op re-run benchmark: converge one sandbox host, then time several no-op re-runs.

    .venv/bin/python bench/noop_rerun.py [--runs 5]

Prints the first converge, the median no-op re-run, the remote commands a re-run sends,
and the ratios against the first converge and against a re-run with TCP_NODELAY off
(pyinfra's default), all measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_world, converge, median

from autoglm_testbed.world import ROOT


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with bench_world("bnoop", net=3, hosts=1) as world:
        inventory = world.write_inventory(ROOT / ".sandbox" / "bnoop" / "inventory.py")
        first = converge(inventory)
        fast = [converge(inventory).seconds for _ in range(args.runs)]
        slow = [
            converge(inventory, env={"AUTOGLM_SSH_NODELAY": "0"}).seconds for _ in range(args.runs)
        ]
        counted = converge(inventory, debug=True)
        if counted.changed():
            print(f"re-run was not a no-op: {counted.changed()}")
            return 1
    print(f"first converge:            {first.seconds:6.2f} s ({len(first.changed())} ops changed)")
    print(
        f"no-op re-run, median of {args.runs}: {median(fast):6.2f} s  (runs: "
        + ", ".join(f"{s:.2f}" for s in fast)
        + ")"
    )
    print(f"  same, TCP_NODELAY off:   {median(slow):6.2f} s")
    print(f"remote commands per re-run: {counted.remote_commands()}")
    print(f"ratio re-run / first converge: {median(fast) / first.seconds:.2f}")
    print(f"ratio re-run / re-run without TCP_NODELAY: {median(fast) / median(slow):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
