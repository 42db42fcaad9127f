"""Model verify benchmark: O(1) re-verify of a ~20 GB lock, and full-verify throughput.

    .venv/bin/python bench/model_verify.py [--equivalent-gib 20] [--real-mib 3072] [--runs 5]

(a) Converged re-verify. A model directory shaped like AutoGLM-Phone-9B (5 shards adding
    up to `--equivalent-gib`, plus the small config and tokenizer files) is made of SPARSE
    files: their size is real, their disk use is zero. The helper's own `Stamps.record`
    writes the stamps it writes after a verified download (it only stats the file), so the
    directory is in the converged state. Then, `--runs` times, what a re-run does:
    the stage's listing command (`model_state.listing_script`, run with sh here instead of
    over SSH), `parse_listing` and `plan_model` must decide "nothing to do"; and the host
    helper (`model_fetch.py --verify stamp`) must trust every file by stamp. Neither reads
    a byte of a weight file, so the figures do not depend on the model's size. Goal: <= 0.5 s.

(b) Full verify (`model_verify: full`). `--real-mib` of random bytes in `--shards` files
    (the disk holds only these, default 3 GiB) are re-hashed by `model_fetch.py --verify
    full` (sha256 with big buffers, shards in parallel threads) and by coreutils
    `sha256sum`, one file after another (one core) and `xargs -P <cores>` (all cores), in
    the same run, page cache warm for both. Goal: ours per core >= 0.9x sha256sum per
    core. Throughput is size-independent, so 20 GiB takes 20 / (GiB/s) seconds; printed.

Everything lives in a scratch directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import median  # noqa: E402

from autoglm_infra.host_tools import model_fetch  # noqa: E402
from autoglm_infra.stages.model.lock import META_DIR, LockedFile, ModelLock, make_lock  # noqa: E402
from autoglm_infra.stages.model.state import (  # noqa: E402
    host_plan,
    listing_script,
    parse_listing,
    plan_model,
)

HELPER = Path(model_fetch.__file__)
SMALL_FILES = {  # name -> size: what a GLM-4.1V-based repository carries besides weights
    "config.json": 1_650,
    "generation_config.json": 210,
    "chat_template.jinja": 3_900,
    "preprocessor_config.json": 430,
    "special_tokens_map.json": 1_100,
    "tokenizer.json": 19_970_000,
    "tokenizer_config.json": 7_600,
    "model.safetensors.index.json": 128_000,
    "README.md": 6_200,
}


def shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def write_plan(lock: ModelLock, model_dir: Path, workers: int) -> Path:
    plan = model_dir / META_DIR / "plan.json"
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(host_plan(lock, "http://127.0.0.1:9", str(model_dir), workers, 1, 1, 0, None))
    return plan


def helper(plan: Path, verify: str) -> tuple[float, float, str]:
    """(wall s, CPU s user+sys, summary line) of one helper run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        ["python3", str(HELPER), "--plan", str(plan), "--verify", verify],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, used, done.stdout.strip()


def timed(argv: list[str], stdin: bytes | None = None) -> tuple[float, float]:
    """(wall s, CPU s user+sys) of one command, its output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, input=stdin)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


# -- (a) converged re-verify -----------------------------------------------------------------


def sparse_model(model_dir: Path, total_gib: float, shards: int) -> ModelLock:
    """Sparse files of the real sizes, stamped as the helper stamps a verified file."""
    model_dir.mkdir(parents=True)
    sizes = {name: size for name, size in SMALL_FILES.items()}
    per_shard = int(total_gib * 2**30) // shards
    sizes |= {shard_name(i, shards): per_shard for i in range(1, shards + 1)}
    files = []
    for name, size in sizes.items():
        with (model_dir / name).open("wb") as fh:
            fh.truncate(size)  # sparse: no block is written
        lfs = name.endswith(".safetensors") or size >= 10 * 2**20
        # digests are what the lock would say; the stamp path compares, never computes
        digest = {"sha256": secrets.token_hex(32)} if lfs else {"git_oid": secrets.token_hex(20)}
        files.append(LockedFile(name, size, **digest))
    lock = make_lock("huggingface", "zai-org/AutoGLM-Phone-9B", "main", "0" * 40, files)
    entries = [model_fetch.Entry(f.path, f.size, f.digest, "") for f in lock.files]
    stamps = model_fetch.Stamps(str(model_dir), {e.path for e in entries})
    for entry in entries:
        stamps.record(entry, str(model_dir / entry.path))
    return lock


def stage_decision(lock: ModelLock, model_dir: Path) -> float:
    """The re-run's host command plus the controller's decision; asserts 'nothing to do'."""
    started = time.perf_counter()
    out = subprocess.run(
        ["sh", "-c", listing_script(str(model_dir))], check=True, capture_output=True, text=True
    ).stdout
    plan = plan_model(lock, parse_listing(out.splitlines()))
    took = time.perf_counter() - started
    if plan.run_helper or len(plan.verified) != len(lock.files):
        raise SystemExit(f"converged directory not recognised: {plan.reason}")
    return took


# -- (b) full verify -------------------------------------------------------------------------


def real_model(model_dir: Path, total_mib: int, shards: int) -> ModelLock:
    """Random shards; their sha256 computed while writing, as a lock would list them."""
    model_dir.mkdir(parents=True)
    block = 16 * 2**20
    files = []
    for i in range(1, shards + 1):
        name = shard_name(i, shards)
        hasher = hashlib.sha256()
        with (model_dir / name).open("wb") as fh:
            for _ in range(total_mib * 2**20 // shards // block):
                data = os.urandom(block)
                hasher.update(data)
                fh.write(data)
        files.append(LockedFile(name, (model_dir / name).stat().st_size, hasher.hexdigest()))
    return make_lock("huggingface", "bench/Verify", "main", "0" * 40, files)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--equivalent-gib", type=float, default=20.0)
    parser.add_argument("--real-mib", type=int, default=3072, help="real bytes for (b), <= 4 GB")
    parser.add_argument("--shards", type=int, default=4, help="shards for (b)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scratch", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args()
    if args.real_mib > 4000:
        parser.error("--real-mib: keep the benchmark's disk use at or below 4 GB")
    cores = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="bench-model-verify-", dir=args.scratch))
    try:
        # (a)
        sparse_dir = scratch / "sparse"
        lock = sparse_model(sparse_dir, args.equivalent_gib, 5)
        plan = write_plan(lock, sparse_dir, 4)
        decisions = [stage_decision(lock, sparse_dir) for _ in range(args.runs)]
        stamp_runs = [helper(plan, "stamp") for _ in range(args.runs)]
        summary = stamp_runs[-1][2]
        if f"{len(lock.files)} by stamp" not in summary:
            raise SystemExit(f"helper did not trust the stamps: {summary}")
        disk = sum(p.stat().st_blocks * 512 for p in sparse_dir.iterdir() if p.is_file())

        # (b)
        real_dir = scratch / "real"
        real = real_model(real_dir, args.real_mib, args.shards)
        real_plan = write_plan(real, real_dir, 4)
        shard_paths = [str(real_dir / f.path) for f in real.files]
        gib = real.total_size / 2**30
        timed(["cat", *shard_paths])  # page cache warm for all
        ours, ours_cpu, one, one_cpu, every = [], [], [], [], []
        for _ in range(args.runs):
            wall, used, summary = helper(real_plan, "full")
            if f"{len(real.files)} re-hashed" not in summary:
                raise SystemExit(f"full verify did not re-hash every file: {summary}")
            ours.append(wall)
            ours_cpu.append(used)
            wall, used = timed(["sha256sum", *shard_paths])
            one.append(wall)
            one_cpu.append(used)
            lines = "\n".join(shard_paths).encode()
            every.append(timed(["xargs", "-P", str(cores), "-n", "1", "sha256sum"], lines)[0])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"(a) converged re-verify, {len(lock.files)} files, "
          f"{lock.total_size / 2**30:.1f} GiB as sparse files ({disk / 2**20:.1f} MiB on disk); "
          f"median of {args.runs}:")  # fmt: skip
    print(f"  stage re-run decision (listing command + parse + plan): "
          f"{median(decisions) * 1000:7.1f} ms  (goal <= 500 ms)")  # fmt: skip
    print(f"  host helper --verify stamp (python3 start included):  "
          f"{median([r[0] for r in stamp_runs]) * 1000:7.1f} ms")  # fmt: skip
    print(f"  ratio stage decision / 0.5 s goal: {median(decisions) / 0.5:.3f}")
    threads = min(len(real.files), cores)
    rate = {"ours": gib / median(ours), "one": gib / median(one), "every": gib / median(every)}
    print(f"(b) full verify of {len(real.files)} files, {gib:.2f} GiB (page cache warm), "
          f"{cores} CPUs, median of {args.runs}:")  # fmt: skip
    print(f"  ours (model_fetch --verify full, {threads} threads): {median(ours):6.2f} s  "
          f"{rate['ours']:5.2f} GiB/s  CPU {median(ours_cpu):5.2f} s")  # fmt: skip
    print(f"  sha256sum, one core:                 {median(one):6.2f} s  "
          f"{rate['one']:5.2f} GiB/s  CPU {median(one_cpu):5.2f} s")  # fmt: skip
    print(f"  sha256sum, xargs -P {cores}:              {median(every):6.2f} s  "
          f"{rate['every']:5.2f} GiB/s")  # fmt: skip
    # per core = bytes per CPU-second of each: what a busy shared machine disturbs least
    per_core = {"ours": gib / median(ours_cpu), "sha256sum": gib / median(one_cpu)}
    print(f"  per CPU-second: ours {per_core['ours']:5.2f} GiB, "
          f"sha256sum {per_core['sha256sum']:5.2f} GiB")  # fmt: skip
    print(f"ratio ours per core / sha256sum per core: "
          f"{per_core['ours'] / per_core['sha256sum']:.2f}  (goal >= 0.9)")  # fmt: skip
    print(f"ratio ours / sha256sum xargs -P {cores}:       {rate['ours'] / rate['every']:.2f}")
    print(f"20 GiB at ours' rate: {20 / rate['ours']:.1f} s; "
          f"at sha256sum -P {cores}: {20 / rate['every']:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
