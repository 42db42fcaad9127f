"""Fan-out benchmark: the no-op re-run of the complete deploy on 1, 4 and 8 hosts.

    .venv/bin/python bench/fanout.py [--hosts 1,4,8] [--runs 3]

Boots as many venv hosts as the largest count, converges them all once, then re-runs the
complete deploy against the first N of them (`--limit`), every count in every round, so
all counts see the same machine load. Two variants, one after the other, each after an
untimed run that records its smoke test for every host (as a user's re-runs with
unchanged settings find it): the complete deploy, whose verify stage asks each host's
engine for a chat completion (on this machine a CPU engine per host, one thread each
(serve_cpu_threads), all on the same cores: that part grows with the fleet here, not on
GPU hosts), and the same with `verify_chat=False` (the endpoint's /health and model list
only), which measures the tool. Prints the medians and the ratio of each count against
one host.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_world, converge, median, timed_run

from autoglm_testbed.converge import pyinfra_bin
from autoglm_testbed.world import ROOT

VARIANTS = {"complete deploy": [], "verify_chat=False": ["--data", "verify_chat=False"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", default="1,4,8", help="comma-separated host counts")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.hosts.split(",")})
    if counts[0] != 1:
        counts.insert(0, 1)  # the baseline every ratio is taken against
    with bench_world("bfan", net=4, hosts=counts[-1]) as world:
        inventory = world.write_inventory(ROOT / ".sandbox" / "bfan" / "inventory.py")
        names = [host.name for host in world.hosts]
        started = time.perf_counter()
        first = converge(inventory)
        first_s = time.perf_counter() - started
        pyinfra, deploy = [str(pyinfra_bin()), str(inventory)], ["deploys/full.py", "-y"]
        seconds: dict[tuple[str, int], list[float]] = {}
        for variant, extra in VARIANTS.items():
            # untimed: the hosts' records take this variant's smoke test, as a user's
            # re-runs with unchanged settings find it (switching variants run by run
            # would test every host on its own each time)
            timed_run([*pyinfra, *deploy, *extra], hosts=len(names))
            for _ in range(args.runs):
                for count in counts:
                    # one --limit per host: pyinfra does not split a comma list
                    limit = [arg for name in names[:count] for arg in ("--limit", name)]
                    run = timed_run([*pyinfra, *limit, *deploy, *extra], hosts=count)
                    seconds.setdefault((variant, count), []).append(run["total"])
    print(f"first converge of {counts[-1]} hosts: {first_s:.1f} s ({len(first.changed())} changes)")
    print(f"no-op re-run, median of {args.runs} (ratio to 1 host):")
    print(f"  {'hosts':>5}  " + "  ".join(f"{v:>26}" for v in VARIANTS))
    for count in counts:
        cells = []
        for variant in VARIANTS:
            value = median(seconds[(variant, count)])
            ratio = value / median(seconds[(variant, 1)])
            cells.append(f"{value:8.2f} s ({ratio:4.2f}x)".rjust(26))
        print(f"  {count:>5}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
