"""The doctor's checks of the venv (drift from its lock, pip check) and the caches. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from autoglm_infra.checks import Check
from autoglm_infra.doctor_probe import CacheDir
from autoglm_infra.python_env import Lock, drift

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
    if on_root:
        where = Check(
            "cache filesystem",
            "warn",
            f"on the root filesystem: {on_root[0]}"
            + (f" and {len(on_root) - 1} more" if len(on_root) > 1 else ""),
            "point python_cache_dir at a data disk: compile caches grow to GBs "
            "and a full / stops the host",
        )
    else:
        mounts = sorted({caches[p].mount for p in wanted if p in caches}) or ["?"]
        where = Check("cache filesystem", "ok", f"on {', '.join(mounts)}")
    return [permissions, where]
