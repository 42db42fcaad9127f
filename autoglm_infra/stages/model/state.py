"""What the model directory on a host holds, and what the model stage must do about it.

The stage reads the directory in ONE remote command: every file's size, mtime and inode
(`find -printf`, no file is read) plus the stamps file the host helper writes after it
verified a file. A file whose stamp matches both the lock's digest and the file's current
size/mtime/inode is trusted without reading it: the O(1) re-verify. Pure: no pyinfra.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from autoglm_infra.stages.model.lock import META_DIR, ModelLock, download_url

HELPER_PATH = "/usr/local/lib/autoglm/model_fetch.py"
TOKEN_PATH = "/etc/autoglm/model-hub-token"
PARTIAL = ".partial"
Verify = Literal["stamp", "full"]


def plan_path(model_dir: str) -> str:
    return f"{model_dir}/{META_DIR}/plan.json"


def stamps_path(model_dir: str) -> str:
    return f"{model_dir}/{META_DIR}/stamps.json"


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    inode: int
    digest: str  # 'sha256:<hex>' or 'gitsha1:<hex>', as verified by the helper


@dataclass(frozen=True)
class ModelDirState:
    exists: bool = False
    files: dict[str, FileStat] = field(default_factory=dict)  # relative path -> stat
    stamps: dict[str, Stamp] = field(default_factory=dict)


def listing_script(model_dir: str) -> str:
    """POSIX sh (GNU find): one 'ML' line per regular file, one 'MS' line of stamps."""
    d = shlex.quote(model_dir)
    meta = shlex.quote(f"{model_dir}/{META_DIR}")
    stamps = shlex.quote(stamps_path(model_dir))
    return (
        f"if [ -d {d} ]; then echo MD; find {d} -mindepth 1 -path {meta} -prune -o "
        r"-type f -printf 'ML\t%s\t%T@\t%i\t%P\n'; fi; "
        f"if [ -f {stamps} ]; then printf 'MS\\t'; tr -d '\\n' < {stamps}; echo; fi"
    )


def _mtime_ns(text: str) -> int:
    """find's %T@ ('1732215245.6471587230') as integer nanoseconds."""
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def parse_stamps(text: str) -> dict[str, Stamp]:
    """The helper's stamps file; anything unreadable counts as 'no stamps' (re-verify)."""
    try:
        doc = json.loads(text)
        return {
            path: Stamp(int(s["size"]), int(s["mtime_ns"]), int(s["inode"]), str(s["digest"]))
            for path, s in doc["files"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def parse_listing(lines: list[str]) -> ModelDirState:
    exists = False
    files: dict[str, FileStat] = {}
    stamps: dict[str, Stamp] = {}
    for line in lines:
        if line == "MD":
            exists = True
        elif line.startswith("ML\t"):
            parts = line.split("\t", 4)
            if len(parts) != 5:
                continue
            _, size, mtime, inode, path = parts
            try:
                files[path] = FileStat(int(size), _mtime_ns(mtime), int(inode))
            except ValueError:
                continue
        elif line.startswith("MS\t"):
            stamps = parse_stamps(line[3:])
    return ModelDirState(exists, files, stamps)


def split_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    """(model listing lines, the rest) of a combined stage snapshot."""
    mine = [ln for ln in lines if ln == "MD" or ln.startswith(("ML\t", "MS\t"))]
    rest = [ln for ln in lines if not (ln == "MD" or ln.startswith(("ML\t", "MS\t")))]
    return mine, rest


@dataclass(frozen=True)
class ModelPlan:
    verified: tuple[str, ...]  # trusted by stamp
    todo: tuple[str, ...]  # missing, changed or unstamped: the helper must look at them
    download_bytes: int  # worst case still to transfer (partials counted as done)
    extras: tuple[str, ...]  # files not in the lock (leftover partials included)
    run_helper: bool
    reason: str


def stamp_ok(stamp: Stamp | None, stat: FileStat | None, size: int, digest: str) -> bool:
    return (
        stamp is not None
        and stat is not None
        and stamp.digest == digest
        and stamp.size == size == stat.size
        and (stamp.mtime_ns, stamp.inode) == (stat.mtime_ns, stat.inode)
    )


def plan_model(
    lock: ModelLock, state: ModelDirState, verify: Verify = "stamp", prune: bool = False
) -> ModelPlan:
    """Decide from the listing alone: no file is read on the host for this."""
    verified, todo = [], []
    download = 0
    for f in lock.files:
        stat = state.files.get(f.path)
        if stamp_ok(state.stamps.get(f.path), stat, f.size, f.digest):
            verified.append(f.path)
            continue
        todo.append(f.path)
        if stat is not None and stat.size == f.size:
            continue  # likely right, only unstamped: the helper re-hashes it first
        partial = state.files.get(f.path + PARTIAL)
        done = partial.size if partial is not None and partial.size <= f.size else 0
        download += f.size - done
    wanted = {f.path for f in lock.files} | {f.path + PARTIAL for f in lock.files}
    extras = tuple(sorted(p for p in state.files if p not in wanted))
    if verify == "full":
        reason = f"full verify requested: re-hash {len(lock.files)} files"
    elif todo:
        reason = f"{len(todo)} of {len(lock.files)} files missing, changed or unverified"
    elif prune and extras:
        reason = f"remove {len(extras)} files not in the lock"
    else:
        reason = f"{len(verified)} files verified by stamp (size, mtime, inode, digest)"
    run = verify == "full" or bool(todo) or (prune and bool(extras))
    return ModelPlan(tuple(verified), tuple(todo), download, extras, run, reason)


def disk_problem(needed: int, margin: int, free: int, model_dir: str) -> str | None:
    """Refusal message when `needed` bytes plus `margin` do not fit in `free`."""
    if needed == 0 or needed + margin <= free:
        return None
    gib = 1024**3
    return (
        f"not enough disk for the model at {model_dir}: {needed / gib:.2f} GiB to download "
        f"+ {margin / gib:.2f} GiB margin (model_disk_margin_mib) > {free / gib:.2f} GiB free; "
        "free space or point model_dir at a larger disk"
    )


def host_plan(
    lock: ModelLock,
    endpoint: str,
    model_dir: str,
    workers: int,
    attempts: int,
    max_delay: float,
    margin_bytes: int,
    token_file: str | None,
    auth: str = "bearer",
) -> bytes:
    """The helper's instructions (JSON): files with digest and URL; never the token.

    `auth` says how the token travels: 'bearer', or 'modelscope' (its cookie as well).
    """
    doc: dict[str, Any] = {
        "version": 1,
        "auth": auth,
        "repo": lock.repo,
        "commit": lock.commit,
        "model_dir": model_dir,
        "workers": workers,
        "attempts": attempts,
        "max_delay": max_delay,
        "margin_bytes": margin_bytes,
        "token_file": token_file,
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "digest": f.digest,
                "url": download_url(lock, endpoint, f.path),
            }
            for f in lock.files
        ],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def helper_command(model_dir: str, verify: Verify, prune: bool) -> str:
    argv = ["python3", HELPER_PATH, "--plan", plan_path(model_dir), "--verify", verify]
    if prune:
        argv.append("--prune")
    return " ".join(shlex.quote(a) for a in argv)
