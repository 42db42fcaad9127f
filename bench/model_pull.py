"""Model pull benchmark: our host helper against plain curl, same bytes, same stand-in, same run.

    .venv/bin/python bench/model_pull.py [--shards 4] [--shard-mib 512] [--runs 3]

Serves `shards` random safetensors-named files from the hub stand-in (its own process,
on 127.0.0.1), then alternates, `runs` times each, into an empty directory:

* curl: one `curl -L` per file, one after another (what a shell script does), no hashing;
* curl -Z: the same files with curl's own parallelism (as many as our workers);
* curl+sync: curl, then `sync`: the same bytes on disk, durable as ours leaves them;
* ours: `model_fetch.py` (Range-capable, hashes while streaming, fsync, atomic rename,
  stamps), `--workers` files at once.

Prints each median wall time, the CPU seconds the client used (user+sys: a figure a
busy shared machine disturbs less than wall time) and the ratios ours / curl. Goal:
<= 1.10x curl. The stand-in sends file bodies with sendfile(2), so the server costs
little CPU and the benchmark measures the clients. `--link-mib-s N` throttles every
connection to N MiB/s (a WAN link) instead of raw loopback, where CPU (hashing) is the
bottleneck. `--compare PATH` times another model_fetch.py in the same
run (e.g. the previous version, from `git show`), as 'other'.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoglm_infra.host_tools import model_fetch  # noqa: E402
from autoglm_infra.stages.model.lock import (  # noqa: E402
    META_DIR,
    download_url,
    parse_hf_revision,
    revision_url,
)
from autoglm_infra.stages.model.state import host_plan  # noqa: E402
from autoglm_testbed.servers import LoopbackServer, TcpReady, free_port  # noqa: E402

REPO = "bench/Model"
HELPER = Path(model_fetch.__file__)


def make_shards(target: Path, shards: int, shard_mib: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    block = 16 * 2**20
    for i in range(1, shards + 1):
        path = target / f"model-{i:05d}-of-{shards:05d}.safetensors"
        if path.exists() and path.stat().st_size == shard_mib * 2**20:
            continue
        with path.open("wb") as fh:
            for _ in range(shard_mib * 2**20 // block):
                fh.write(os.urandom(block))
    (target / "config.json").write_text('{"model_type": "bench"}\n')


def timed(*commands: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of the commands run one after another."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    for argv in commands:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--link-mib-s", type=int, default=0, help="per-connection bandwidth limit (0: none)"
    )
    parser.add_argument("--scratch", type=Path, default=None, help="default: a temp dir")
    parser.add_argument(
        "--compare", type=Path, default=None, help="another model_fetch.py, timed as 'other'"
    )
    args = parser.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-model-pull-"))
    source = scratch / "source"
    make_shards(source, args.shards, args.shard_mib)
    port = free_port()
    server = LoopbackServer(
        [sys.executable, "-m", "autoglm_testbed.hub_standin", "--workdir",
         str(scratch / "hub"), "--publish", f"{REPO}={source}", "--port", str(port)],
        log_path=scratch / "hub.log", ready=TcpReady("127.0.0.1", port), cwd=ROOT,
        start_timeout=300,
    )  # fmt: skip
    results: dict[str, list[float]] = {"curl": [], "curl -Z": [], "curl+sync": [], "ours": []}
    if args.compare:
        results["other"] = []
    cpu: dict[str, list[float]] = {name: [] for name in results}
    try:
        with server:
            endpoint = f"http://127.0.0.1:{port}"
            if args.link_mib_s:  # a WAN-like link: each connection is throttled
                limit = json.dumps({"faults": [], "rate_bps": args.link_mib_s * 2**20}).encode()
                urllib.request.urlopen(f"{endpoint}/_standin/faults", data=limit).close()
            # stdlib only (no requests), so the benchmark also runs on a bare machine
            with urllib.request.urlopen(revision_url("huggingface", endpoint, REPO, "main")) as r:
                lock = parse_hf_revision(json.load(r), REPO, "main", endpoint)
            target = scratch / "out"
            pairs = [(download_url(lock, endpoint, f.path), f.path) for f in lock.files]
            curl = ["curl", "-sS", "--fail", "-L", "--create-dirs", "--output-dir", str(target)]
            for url, path in pairs:
                curl += ["-o", path, url]
            curl_z = [*curl[:1], "-Z", "--parallel-max", str(args.workers), *curl[1:]]

            def ours(helper: Path = HELPER) -> list[str]:
                plan = target / META_DIR / "plan.json"
                plan.parent.mkdir(parents=True, exist_ok=True)
                plan.write_bytes(
                    host_plan(lock, endpoint, str(target), args.workers, 3, 2, 0, None)
                )
                return ["python3", str(helper), "--plan", str(plan)]

            for _ in range(args.runs):
                for name in results:
                    shutil.rmtree(target, ignore_errors=True)
                    subprocess.run(["sync"], check=True)  # earlier writeback off the clock
                    commands = {
                        "curl": [curl],
                        "curl -Z": [curl_z],
                        "curl+sync": [curl, ["sync"]],
                        "ours": [ours()],
                        "other": [ours(args.compare or HELPER)],
                    }[name]
                    wall, used = timed(*commands)
                    results[name].append(wall)
                    cpu[name].append(used)
            shutil.rmtree(target, ignore_errors=True)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)

    gib = lock.total_size / 2**30
    print(f"{len(lock.files)} files, {gib:.2f} GiB from the hub stand-in on 127.0.0.1; "
          f"{args.runs} runs each, median; {os.cpu_count()} CPUs; link limit per connection: "
          f"{f'{args.link_mib_s} MiB/s' if args.link_mib_s else 'none'}")  # fmt: skip
    med = {name: statistics.median(times) for name, times in results.items()}
    for name, times in results.items():
        shown = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {name:9s} {med[name]:6.2f} s  {gib / med[name]:5.2f} GiB/s  "
              f"client CPU {statistics.median(cpu[name]):5.2f} s  (runs: {shown})")  # fmt: skip
    print(f"ratio ours / curl:      {med['ours'] / med['curl']:.2f}  (goal <= 1.10)")
    print(f"ratio ours / curl -Z:   {med['ours'] / med['curl -Z']:.2f}")
    print(f"ratio ours / curl+sync: {med['ours'] / med['curl+sync']:.2f}")
    if args.compare:
        print(f"ratio other / curl:     {med['other'] / med['curl']:.2f}  (other: {args.compare})")
    print("ours also hashes every byte (sha256 / git sha1), fsyncs and renames atomically;")
    print("curl only writes the bytes (into the page cache, written back after the clock).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
