"""Python env stage, pure core: profile choice, hash locks, install and swap plan.

A *profile* names one hash-locked requirement file under autoglm_infra/locks/: ``cpu`` for
GPU-less hosts and, for GPU hosts, the lock the stack table names for the engine release and
torch flavour (``vllm-0.33.0-cu130``; ``vllm-cu128`` is vLLM 0.12.0's). A lock
is the output of scripts/lock_requirements.py: ``# key: value`` metadata lines, then
``name==version --hash=sha256:...`` entries, complete (installed with ``--no-deps``).

The venv at ``python_venv_dir`` is a symlink to ``<venv>.builds/<digest>``: a new lock is
installed into a fresh directory beside the running one and the link is swapped only
after the install and its checks passed, so a failed install never touches the venv in
service. Never imports pyinfra.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from autoglm_infra.common.hash_lock import (
    MIN_PYTHON,
    HashLockError,
    Lock,
    available_profiles,
    parse_lock,
    variant_paths,
)
from autoglm_infra.stack.resolver import StackPlan

CPU_PROFILE = "cpu"
AUTO = "auto"
BUILD_LOCK = ".build.lock"  # flock'ed by the build writing into <venv>.builds
BUILD_LOCK_WAIT_S = 120  # a killed run's build is gone within seconds (converge_lock)
STAMP_FILE = "autoglm-lock.sha256"  # inside a built venv: digest of what built it
LOCK_COPY = "autoglm-lock.txt"  # inside a built venv: the requirements it was built from
CACHE_SUBDIRS: dict[str, str] = {
    "HF_HOME": "huggingface",
    "TORCH_HOME": "torch",
    "VLLM_CACHE_ROOT": "vllm",
    "TRITON_CACHE_DIR": "triton",
    "XDG_CACHE_HOME": "xdg",
}

KEY_PROFILE = "python_profile"
KEY_INTERPRETER = "python_interpreter"
KEY_LOCKS_DIR = "python_locks_dir"


class PythonEnvError(HashLockError):
    """A user-facing refusal: names the key, the bad value and the fix."""


# ---------------------------------------------------------------------------------------
# profile and lock


def select_profile(requested: str, engine: str, planned: str) -> str:
    """The lock profile: explicit, or for 'auto' the stack plan's (`planned`, from
    `plan_profile`), and `cpu` when the engine is `transformers serve` on CPU
    (serve_engine=cpu, what GPU-less hosts run)."""
    if requested != AUTO:
        return requested
    return CPU_PROFILE if engine == CPU_PROFILE else planned


def plan_profile(plan: StackPlan) -> str:
    """The lock the stack table names for the plan's engine release and torch flavour
    (`vllm-0.33.0-cu130`); where the table has none (no lock can be made from PyPI), the
    name `scripts/lock_requirements.py` would give it, so the refusal names the command."""
    return plan.lock_profile or f"{plan.engine}-{plan.engine_version}-{plan.torch_flavour}"


def load_lock(
    profile: str, locks_dir: Path, requested: str = AUTO, python_version: str | None = None
) -> Lock:
    """The profile's lock for `python_version`: <profile>.txt, or the <profile>.py3XX.txt
    variant whose `python:` range holds it; <profile>.txt when none does (check_interpreter
    then says which command makes one). PythonEnvError for an unknown profile or no lock."""
    locks = load_lock_variants(profile, locks_dir, requested)
    try:
        version = Version(python_version) if python_version else None
    except InvalidVersion:
        version = None
    return next((lock for lock in locks if version and version in lock.python), locks[0])


def load_lock_variants(profile: str, locks_dir: Path, requested: str = AUTO) -> list[Lock]:
    """Every lock of a profile, <profile>.txt first."""
    path = locks_dir / f"{profile}.txt"
    if not path.is_file():
        known = ", ".join(available_profiles(locks_dir)) or "none"
        if requested != AUTO:
            raise PythonEnvError(
                f"{KEY_PROFILE}={requested!r}: unknown profile, there is no lock {path} "
                f"(profiles with a lock: {known}); use one of them or 'auto'"
            )
        raise PythonEnvError(
            f"no lock for profile {profile!r} (resolved from the stack plan): {path} does "
            f"not exist; locks exist for: {known}. Generate it with "
            f"`python scripts/lock_requirements.py {profile}`, or set {KEY_PROFILE} to "
            "one of those (for a GPU host pick the cuda_version whose flavour has a lock)"
        )
    variants = variant_paths(locks_dir, profile)
    return [parse_lock(f.read_text(), profile, str(f)) for f in (path, *variants)]


def check_interpreter(interpreter: str, version: str | None, lock: Lock) -> None:
    """Refuse a missing interpreter or one outside the lock's Python range."""
    if not version:
        raise PythonEnvError(
            f"{KEY_INTERPRETER}={interpreter!r}: not found or not runnable on the host; "
            "install python3 or point python_interpreter at an existing interpreter"
        )
    try:
        found = Version(version)
    except InvalidVersion:
        raise PythonEnvError(
            f"{KEY_INTERPRETER}={interpreter!r}: odd version {version!r}"
        ) from None
    if found < MIN_PYTHON:
        raise PythonEnvError(
            f"{KEY_INTERPRETER}={interpreter!r} is Python {version}, too old: the serving "
            f"stack needs Python >= {MIN_PYTHON}; install a newer python3 and set "
            f"{KEY_INTERPRETER} to it"
        )
    if found not in lock.python:
        raise PythonEnvError(
            f"{KEY_INTERPRETER}={interpreter!r} is Python {version}, but lock "
            f"{lock.profile!r} ({lock.source}) was resolved for Python {lock.python}: use an "
            f"interpreter in that range, or regenerate the lock with "
            f"`python scripts/lock_requirements.py {lock.profile} --python "
            f"{found.major}.{found.minor}`"
        )


# ---------------------------------------------------------------------------------------
# state on the host


@dataclass(frozen=True)
class VenvState:
    """What the python env fact read (see stages/python_env/ops.py)."""

    interpreter_version: str | None = None  # "3.11.2"; None: interpreter missing
    has_venv_module: bool = False  # `python -m venv` can bootstrap pip (ensurepip)
    user: tuple[str, str, str] | None = None  # (uid, home, shell) of the service user
    dirs: Mapping[str, tuple[str, str, str]] | None = None  # path -> (mode, owner, group)
    link_target: str | None = None  # where the venv symlink points (None: no link)
    stamp: str | None = None  # digest recorded in the venv in service
    installed: Mapping[str, str] | None = None  # canonical name -> version (with +label)


def build_digest(lock: Lock, interpreter: str) -> str:
    """What a venv is keyed on: the lock's requirements and the interpreter it uses."""
    return hashlib.sha256(f"{lock.digest}\ninterpreter={interpreter}\n".encode()).hexdigest()


def builds_dir(venv_dir: str) -> str:
    return f"{venv_dir}.builds"


def build_paths(venv_dir: str, digest: str) -> tuple[str, str]:
    """The two directories a lock's build may live in (a rebuild uses the other one)."""
    base = f"{builds_dir(venv_dir)}/{digest[:16]}"
    return base, f"{base}-b"


def next_build_path(venv_dir: str, digest: str, link_target: str | None) -> str:
    """Where to build: never the directory in service (a rebuild after drift)."""
    first, second = build_paths(venv_dir, digest)
    return second if link_target == first else first


def parse_dist_info(names: Iterable[str]) -> dict[str, str]:
    """`torch-2.13.0+cpu.dist-info` -> {'torch': '2.13.0+cpu'} (keeps local labels)."""
    found: dict[str, str] = {}
    for name in names:
        stem = name.rsplit("/", 1)[-1].removesuffix(".dist-info")
        dist, sep, version = stem.rpartition("-")
        if sep and dist:
            found[canonicalize_name(dist)] = version
    return found


def drift(lock: Lock, installed: Mapping[str, str]) -> list[str]:
    """Locked distributions missing or at another version in the venv ('name: want, got')."""
    wrong = []
    for name, version in lock.pins().items():
        got = installed.get(name)
        if got is None or not _same_version(got, version):
            wrong.append(f"{name}: locked {version}, installed {got or 'nothing'}")
    return wrong


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)  # local labels count: 2.9.0 != 2.9.0+cu128
    except InvalidVersion:
        return a == b


def needs_build(state: VenvState, lock: Lock, venv_dir: str, digest: str) -> str | None:
    """Why the venv must be (re)built, or None when the one in service is right."""
    if state.link_target is None:
        return f"no venv at {venv_dir}"
    if state.link_target not in build_paths(venv_dir, digest):
        return f"{venv_dir} points to {state.link_target}, not the build of this lock"
    if state.stamp != digest:
        return "the venv in service was not built from this lock"
    wrong = drift(lock, state.installed or {})
    if wrong:
        return f"{len(wrong)} distributions drifted from the lock ({'; '.join(wrong[:3])})"
    return None


# ---------------------------------------------------------------------------------------
# install


def cache_environment(cache_dir: str) -> dict[str, str]:
    """Environment the model server runs with: every cache under python_cache_dir."""
    return {var: f"{cache_dir}/{sub}" for var, sub in CACHE_SUBDIRS.items()}


def index_args(
    lock: Lock,
    index_url: str | None,
    torch_index_base: str | None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """pip arguments naming where files come from (hashes make plain-http mirrors safe)."""
    args: list[str] = []
    urls: list[str] = []
    if index_url:
        args += ["--index-url", index_url]
        urls.append(index_url)
    if lock.torch_index and torch_index_base:
        torch_url = f"{torch_index_base.rstrip('/')}/{lock.torch_index}"
        args += ["--extra-index-url", torch_url]
        urls.append(torch_url)
    for url in urls:
        parts = urlsplit(url)
        # pip ignores plain-http indexes unless trusted; every file is hash-checked anyway.
        if parts.scheme == "http" and parts.hostname:
            args += ["--trusted-host", parts.hostname]
    return [*args, *extra_args]


def pip_check_filter(expected: Iterable[str]) -> str:
    """Shell filter dropping the `pip check` lines a lock accepts on purpose."""
    patterns = [e for e in expected if e]
    if not patterns:
        return "cat"
    return "grep -v -F " + " ".join(f"-e {shlex.quote(p)}" for p in patterns)


def build_script(
    lock: Lock,
    interpreter: str,
    venv_dir: str,
    digest: str,
    new: str,
    lock_upload: str,
    pip_args: Sequence[str],
) -> str:
    """Shell that builds the venv beside the one in service, checks it, then swaps the link.

    `new` is the build directory (see next_build_path), `lock_upload` where the
    requirements were uploaded. Any failure removes the new build, keeps the log in
    <venv>.builds/last-failed.log and leaves the link as it was.
    """
    q_new, q_venv = shlex.quote(new), shlex.quote(venv_dir)
    q_builds = shlex.quote(builds_dir(venv_dir))
    log = f"{q_builds}/last-failed.log"
    pip = " ".join(shlex.quote(a) for a in pip_args)
    imports = "; ".join(f"import {m}" for m in lock.import_check) or "pass"
    fail = (
        f'fail() {{ echo "autoglm python env: $1" >&2; cp -f {q_new}/build.log {log} '
        f"2>/dev/null; rm -rf {q_new} {shlex.quote(lock_upload)}; "
        f'echo "autoglm python env: nothing changed, '
        f"{venv_dir} still serves the previous venv (log: {builds_dir(venv_dir)}/"
        'last-failed.log)" >&2; exit 1; }'
    )
    explain = (
        f"if grep -q 'No space left on device' {q_new}/build.log; then "
        f"cp -f {q_new}/build.log {log} 2>/dev/null; rm -rf {q_new}; "
        f'in_service=$(du -sm "$(readlink -f {q_venv})" 2>/dev/null | cut -f1); '
        f'fail "no space left on device at {builds_dir(venv_dir)}: $(df -m --output=avail '
        f"{q_builds} | tail -1 | tr -d ' ') MiB free once the failed build was removed; a build "
        f"of lock {lock.profile} needs about as much as the venv in service "
        f'(${{in_service:-?}} MiB, see du -sm {venv_dir}/); free space there and converge again"; '
        f"elif grep -q 'DO NOT MATCH THE HASHES' {q_new}/build.log; then "
        'fail "hash mismatch: the index served a file whose sha256 is not in lock '
        f"{lock.profile} (tampered file or wrong mirror): $(grep -A3 'DO NOT MATCH' "
        f"{q_new}/build.log | grep -E 'Expected|Got|from' | tr -s ' ' | tr '\\n' ' ')\"; "
        f"elif grep -q -E 'No matching distribution|Could not find a version' {q_new}/build.log; "
        'then fail "the index has no file for a locked requirement: $(grep -o -E '
        f"'No matching distribution found for [^ ]+' {q_new}/build.log | head -3 | "
        "tr '\\n' ' ')(check pip_index_url / python_torch_index_url)\"; "
        f"else fail \"pip install failed: $(tail -5 {q_new}/build.log | tr '\\n' ' ')\"; fi"
    )
    check = pip_check_filter(lock.expected_conflicts)
    q_imports = shlex.quote(imports)
    busy = (
        f'echo "autoglm python env: another build still runs in {builds_dir(venv_dir)} '
        f"(waited {BUILD_LOCK_WAIT_S} s for {builds_dir(venv_dir)}/{BUILD_LOCK}); nothing "
        'changed; run again once it is gone" >&2; exit 1'
    )
    steps = [
        "set -u",
        fail,
        f"mkdir -p {q_builds} && chmod 755 {q_builds}",
        # one writer per build directory: a killed run's build holds this until it is gone
        f"exec 8>>{q_builds}/{BUILD_LOCK} && flock -w {BUILD_LOCK_WAIT_S} 8 || {{ {busy}; }}",
        # a build that passed its checks before its run was lost is reused, not redone
        f'if [ "$(cat {q_new}/{STAMP_FILE} 2>/dev/null)" = {digest} ] && '
        f"{q_new}/bin/python -c {q_imports} >/dev/null 2>&1; then "
        f"rm -f {shlex.quote(lock_upload)}; "
        f'echo "autoglm python env: reusing the checked build {new}"; else',
        f"rm -rf {q_new}",
        f"{shlex.quote(interpreter)} -m venv {q_new} || fail 'python -m venv failed'",
        f"mv {shlex.quote(lock_upload)} {q_new}/{LOCK_COPY}",
        f"{q_new}/bin/python -m pip install --no-input --disable-pip-version-check "
        f"--no-cache-dir --require-hashes --only-binary=:all: --no-deps {pip} "
        f"-r {q_new}/{LOCK_COPY} > {q_new}/build.log 2>&1 || {{ {explain}; }}",
        f"{q_new}/bin/python -c {q_imports} >> {q_new}/build.log 2>&1 "
        f"|| fail 'the new venv cannot import {' '.join(lock.import_check)}'",
        f"problems=$({q_new}/bin/python -m pip check 2>&1 | {check} | grep -v '^No broken' "
        "|| true)",
        '[ -z "$problems" ] || fail "pip check: $problems"',
        f"rm -f {q_new}/build.log && chown -R root:root {q_new} && chmod -R go-w,a+rX {q_new}",
        # last: the stamp vouches for a complete, checked and locked-down build
        f"printf '%s\\n' {digest} > {q_new}/{STAMP_FILE}",
        "fi",
        # a real directory at the venv path (not made by us) is kept aside, not deleted
        f"if [ -d {q_venv} ] && [ ! -L {q_venv} ]; then mv {q_venv} {q_builds}/unmanaged-$$; fi",
        f"previous=$(readlink {q_venv} || true)",
        f"ln -sfn {q_new} {q_venv}.autoglm-new && mv -Tf {q_venv}.autoglm-new {q_venv}",
        # keep the new build and the one it replaced (rollback); drop older builds
        f"for d in {q_builds}/*/; do d=${{d%/}}; "
        f'[ "$d" = {q_new} ] || [ "$d" = "$previous" ] || rm -rf "$d"; done',
        f"rm -f {log}",
    ]
    return "\n".join(steps) + "\n"
