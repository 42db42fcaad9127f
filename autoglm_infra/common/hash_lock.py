"""Hash locks: complete, hash-pinned requirement files, one per profile, in autoglm_infra/locks.

A lock is the output of scripts/lock_requirements.py: ``# key: value`` metadata lines, then
``name==version --hash=sha256:...`` entries, complete (installed with ``--no-deps``). The
python env stage installs one into a venv; the docker stage bakes one into a derived image.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

DEFAULT_LOCKS_DIR = Path(__file__).resolve().parents[1] / "locks"
# vLLM and SGLang need 3.10+; a lock can narrow this further with its `python:` line.
MIN_PYTHON = Version("3.10")

_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


class HashLockError(ValueError):
    """A lock that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Requirement:
    name: str  # canonical (PEP 503) name
    version: str  # exact, with any local label ("2.13.0+cpu")
    hashes: tuple[str, ...]  # sha256 of every file pip may accept

    @property
    def local_label(self) -> str:
        return self.version.partition("+")[2]

    def line(self) -> str:
        hashes = " ".join(f"--hash=sha256:{h}" for h in self.hashes)
        return f"{self.name}=={self.version} {hashes}"


@dataclass(frozen=True)
class Lock:
    profile: str
    source: str  # where it was read from, for messages
    python: SpecifierSet  # interpreter versions the lock was resolved for
    torch_index: str | None  # <torch index base>/<this> serves the local-label wheels
    import_check: tuple[str, ...]  # modules that must import in the new venv
    expected_conflicts: tuple[str, ...]  # `pip check` lines accepted on purpose
    requirements: tuple[Requirement, ...]

    @property
    def digest(self) -> str:
        """sha256 over the sorted requirement lines: comment edits do not rebuild a venv."""
        body = "\n".join(sorted(r.line() for r in self.requirements)) + "\n"
        return hashlib.sha256(body.encode()).hexdigest()

    def requirements_text(self) -> str:
        """What pip installs (`-r`), one pinned, hashed requirement per line."""
        return "".join(f"{r.line()}\n" for r in self.requirements)

    def pins(self) -> dict[str, str]:
        return {r.name: r.version for r in self.requirements}


# <profile>.py312.txt: the same profile resolved for another Python minor.
_VARIANT = re.compile(r"\.py3\d+$")


def variant_file(profile: str, python_minor: str) -> str:
    """File name of a profile's lock for one Python minor ("3.12" -> vllm-cu128.py312.txt)."""
    return f"{profile}.py{python_minor.replace('.', '')}.txt"


def available_profiles(locks_dir: Path) -> list[str]:
    if not locks_dir.is_dir():
        return []
    return sorted({_VARIANT.sub("", p.stem) for p in locks_dir.glob("*.txt")})


def parse_lock(text: str, profile: str, source: str = "<lock>") -> Lock:
    meta: dict[str, list[str]] = {}
    requirements: list[Requirement] = []
    # pip's line continuations: join "\"-ended lines into one logical line.
    logical = re.sub(r"\\\s*\n", " ", text)
    for number, raw in enumerate(logical.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            field, sep, value = line[1:].strip().partition(":")
            if sep and re.fullmatch(r"[a-z][a-z-]*", field.strip()):
                meta.setdefault(field.strip(), []).append(value.strip())
            continue
        match = _REQ_LINE.match(line)
        if not match:
            raise HashLockError(f"{source}: entry {number} is not 'name==version': {line!r}")
        hashes = tuple(_HASH.findall(line))
        if not hashes:
            raise HashLockError(f"{source}: {match.group(1)} has no --hash (not a hash lock)")
        requirements.append(Requirement(canonicalize_name(match.group(1)), match.group(3), hashes))
    if not requirements:
        raise HashLockError(f"{source}: no requirements")
    try:
        python = SpecifierSet(meta.get("python", [f">={MIN_PYTHON}"])[0])
    except InvalidSpecifier as exc:
        raise HashLockError(f"{source}: bad 'python:' line ({exc})") from None
    torch_index = (meta.get("torch-index") or [""])[0] or None
    imports = tuple((meta.get("import-check") or [""])[0].split())
    return Lock(
        profile=profile,
        source=source,
        python=python,
        torch_index=torch_index,
        import_check=imports,
        expected_conflicts=tuple(meta.get("expected-conflict", [])),
        requirements=tuple(requirements),
    )


def variant_paths(locks_dir: Path, profile: str) -> list[Path]:
    """The profile's per-Python variants (<profile>.py3XX.txt), sorted."""
    return sorted(p for p in locks_dir.glob(f"{profile}.py3*.txt") if _VARIANT.search(p.stem))
