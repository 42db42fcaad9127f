"""Fan-out benchmark: the same converge against 1 host and against 8 hosts.

    .venv/bin/python bench/fanout.py [--hosts 8] [--runs 3]

Prints first-converge and no-op re-run times for both and their ratios (goal: 8 hosts
within 1.5x of 1 host), measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_world, converge, median

from autoglm_testbed.world import ROOT


def measure(name: str, net: int, hosts: int, runs: int) -> tuple[float, float]:
    with bench_world(name, net=net, hosts=hosts) as world:
        inventory = world.write_inventory(ROOT / ".sandbox" / name / "inventory.py")
        first = converge(inventory).seconds
        rerun = median([converge(inventory).seconds for _ in range(runs)])
    return first, rerun


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    one_first, one_rerun = measure("bfan1", 4, 1, args.runs)
    many_first, many_rerun = measure("bfann", 5, args.hosts, args.runs)
    print(f"{'':18} {'1 host':>9} {args.hosts:>4} hosts {'ratio':>7}")
    print(
        f"{'first converge':18} {one_first:8.2f}s {many_first:9.2f}s {many_first / one_first:7.2f}"
    )
    print(f"{'no-op re-run':18} {one_rerun:8.2f}s {many_rerun:9.2f}s {many_rerun / one_rerun:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
