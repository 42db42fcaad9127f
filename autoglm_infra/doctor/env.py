"""The doctor's checks of the venv (drift from its lock, pip check) and the caches. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from autoglm_infra.common.checks import Check
from autoglm_infra.common.hash_lock import Lock
from autoglm_infra.doctor.probe import CacheDir, CacheEntry, PathAccess
from autoglm_infra.stages.python_env.venv import drift

ENGINE_DISTS = ("vllm", "torch", "transformers")
ENV_FIX = "run deploys/python_env.py: it rebuilds the venv from the lock aside and swaps it"


def venv_lock_check(lock: Lock, installed: Mapping[str, str] | None, venv_dir: str) -> Check:
    name = "venv lock"
    if installed is None:
        return Check(name, "fail", f"no venv at {venv_dir}", ENV_FIX)
    wrong = drift(lock, installed)
    if wrong:
        return Check(
            name,
            "fail",
            f"{len(wrong)} of {len(lock.requirements)} distributions "
            f"differ from lock {lock.profile}: {'; '.join(wrong[:4])}",
            ENV_FIX,
        )
    return Check(name, "ok", f"{len(lock.requirements)} distributions as in lock {lock.profile}")


def engine_versions_check(lock: Lock, installed: Mapping[str, str] | None) -> Check:
    """The engine, torch and transformers: the versions the troubleshooting guides ask for."""
    name = "engine versions"
    pins = lock.pins()
    names = [n for n in ENGINE_DISTS if n in pins]
    got = installed or {}
    shown = ", ".join(f"{n} {got.get(n, 'missing')}" for n in names)
    wrong = [n for n in names if n in {w.split(":")[0] for w in drift(lock, got)}]
    if wrong:
        want = ", ".join(f"{n} {pins[n]}" for n in wrong)
        return Check(name, "fail", f"installed {shown}; lock {lock.profile} wants {want}", ENV_FIX)
    return Check(name, "ok", shown)


def pip_check_check(lines: Sequence[str] | None, expected: Sequence[str]) -> Check:
    name = "pip check"
    if lines is None:
        return Check(name, "skip", "no venv")
    problems = [
        ln
        for ln in lines
        if ln and not ln.startswith("No broken") and not any(e and e in ln for e in expected)
    ]
    if problems:
        return Check(name, "fail", "; ".join(problems[:4]), ENV_FIX)
    accepted = " (the lock's declared conflicts accepted)" if expected else ""
    return Check(name, "ok", f"no broken requirements{accepted}")


def cache_checks(caches: Mapping[str, CacheDir], wanted: Sequence[str], user: str) -> list[Check]:
    """Every cache directory exists and the service user can write it; not on / (warn)."""
    missing = [p for p in wanted if not caches.get(p, CacheDir(p, False)).exists]
    readonly = [p for p in wanted if p not in missing and not caches[p].writable]
    if missing or readonly:
        parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
            [
                f"not writable by {user}: "
                + ", ".join(f"{p} ({caches[p].owner} {caches[p].mode})" for p in readonly)
            ]
            if readonly
            else []
        )
        fix = (
            f"{ENV_FIX} (owner {user}, mode 750); or by hand: "
            f"chown -R {user}:{user} DIR && chmod 750 DIR"
        )
        permissions = Check("cache permissions", "fail", "; ".join(parts), fix)
    else:
        permissions = Check(
            "cache permissions", "ok", f"{len(wanted)} directories writable by {user}"
        )
    on_root = [p for p in wanted if p in caches and caches[p].mount == "/"]
    mounts = sorted({caches[p].mount for p in wanted if p in caches and caches[p].mount})
    if not any(caches.get(p, CacheDir(p, False)).exists for p in wanted):
        where = Check("cache filesystem", "skip", "no cache directory exists yet")
    elif on_root:
        where = Check(
            "cache filesystem",
            "warn",
            f"on the root filesystem: {on_root[0]}"
            + (f" and {len(on_root) - 1} more" if len(on_root) > 1 else ""),
            "point python_cache_dir at a data disk: compile caches grow to GBs "
            "and a full / stops the host",
        )
    elif mounts:
        where = Check("cache filesystem", "ok", f"on {', '.join(mounts)}")
    else:
        where = Check(
            "cache filesystem",
            "warn",
            "findmnt named no mount point for the cache directories",
            "install util-linux (findmnt) on the host",
        )
    return [permissions, where]


# Compile caches whose kernels are dlopen()ed or executed: a noexec mount breaks them.
EXEC_ROLES = ("home", "TRITON_CACHE_DIR", "VLLM_CACHE_ROOT")


def cache_mount_check(paths: Mapping[str, PathAccess], wanted: Sequence[str]) -> Check:
    """Cache filesystems must be read-write, and exec where JIT kernels are loaded from."""
    name = "cache mounts"
    problems = []
    mounts = set()
    for path in wanted:
        found = paths.get(path)
        if found is None or not found.exists:
            continue
        if found.read_only:
            problems.append(f"{path} is on a read-only mount ({found.mount})")
            mounts.add(found.mount)
        if found.noexec and found.role in EXEC_ROLES:
            problems.append(
                f"{path} is on a noexec mount ({found.mount}): Triton/Inductor "
                "kernels built there cannot be loaded"
            )
            mounts.add(found.mount)
    if problems:
        return Check(
            name,
            "fail",
            "; ".join(problems),
            f"remount read-write and exec (mount -o remount,rw,exec {' '.join(sorted(mounts))}, "
            "and drop ro/noexec in /etc/fstab), or point python_cache_dir at such a filesystem",
        )
    present = [paths[p] for p in wanted if p in paths and paths[p].exists]
    if not present:
        return Check(name, "skip", "no cache directory exists yet")
    used = sorted({p.mount for p in present if p.mount})
    if not used:
        return Check(
            name,
            "warn",
            "findmnt named no mount for the cache directories: options not read",
            "install util-linux (findmnt) on the host",
        )
    return Check(name, "ok", f"read-write, exec where kernels load ({', '.join(used)})")


def stale_cache_check(venv_built: int | None, entries: Sequence[CacheEntry]) -> Check:
    """Compile-cache entries not touched since the current venv was built (heuristic).

    vLLM, Triton and Inductor key their entries by hashes that include the engine, torch
    and Triton versions, so an entry untouched since the venv swap belongs to another
    engine/torch build: never read again (dead weight), or left half-written by an
    interrupted compile. A venv rebuilt at the same versions makes old entries look stale
    too; removing them only costs one recompile.
    """
    name = "stale caches"
    if venv_built is None:
        return Check(name, "skip", "no venv stamp to date the caches against")
    stale = [e.path for e in entries if not e.newer_than_venv]
    if not stale:
        return Check(name, "ok", f"{len(entries)} compile-cache entries, none older than the venv")
    return Check(
        name,
        "warn",
        f"{len(stale)} compile-cache entries untouched since the venv was built "
        f"(another engine/torch version): {', '.join(stale[:4])}"
        + (f" (+{len(stale) - 4} more)" if len(stale) > 4 else ""),
        "stop the service, rm -rf the listed paths, start it (they are rebuilt on the "
        "first start, which then takes longer)",
    )


def cache_ownership_check(
    foreign: Sequence[tuple[str, str]], wanted: Sequence[str], user: str, *, home_exists: bool
) -> Check:
    """Files inside the caches owned by someone else (e.g. root ran the engine once).

    `home_exists`: the tree searched (python_cache_dir) was there to search."""
    name = "cache ownership"
    found = [(owner, path) for owner, path in foreign if path not in wanted]
    if not home_exists:
        return Check(name, "skip", "no cache directory exists yet: nothing to own")
    if not found:
        return Check(name, "ok", f"everything below the cache directories is owned by {user}")
    shown = ", ".join(f"{path} ({owner})" for owner, path in found[:4])
    paths = {path for _, path in found}
    tops = sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))
    return Check(
        name,
        "warn",
        f"not owned by {user}: {shown}" + (" and more" if len(found) > 4 else ""),
        f"chown -R {user}:{user} {' '.join(tops)} (or remove: rm -rf {' '.join(tops)}); "
        "run the engine by hand only as the service user (runuser -u USER)",
    )
