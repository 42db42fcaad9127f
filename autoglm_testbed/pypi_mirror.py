"""A real PyPI-style index (pypiserver) on the sandbox bridge, and the wheel cache behind it.

The controller fills a content-keyed cache (~/.cache/autoglm-infra/wheels/sha256/<hex>/
<file>) with `pip download` under pip's normal configuration, so the same code works on a
machine whose pip.conf points at a local wheel folder and on one that reaches PyPI and
PyTorch's index. Every file is checked against the lock's hashes before it enters the
cache; a warm cache costs no pip call at all. The mirror serves links to cached files:

    wheels = WheelCache().ensure(lock)           # lock: autoglm_infra.stages.python_env.venv.Lock
    with PypiMirror(tmp / "pypi", "10.231.12.1", wheels) as mirror:
        ...  # hosts use mirror.index_url ("http://10.231.12.1:<port>/simple/")

`mirror.tamper(name)` replaces one served file by different bytes (the cache keeps the
good copy), for hash-mismatch tests. Not for production use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from autoglm_infra.common.hash_lock import Lock, Requirement
from autoglm_testbed.servers import (
    HttpReady,
    LoopbackServer,
    StandinLifecycle,
    free_port,
)

DEFAULT_WHEEL_CACHE = Path.home() / ".cache" / "autoglm-infra" / "wheels"
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl"


class WheelCacheError(RuntimeError):
    """The cache could not be filled for a lock; the message has pip's reason."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WheelCache:
    """Wheels stored by content: sha256/<hex>/<filename>."""

    def __init__(self, root: Path = DEFAULT_WHEEL_CACHE) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path | None:
        folder = self.root / "sha256" / sha256
        found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
        return found[0] if found else None

    def _compatible(self, requirement: Requirement) -> Path | None:
        """A cached wheel of `requirement` installable on this (controller) platform."""
        supported = set(sys_tags())
        for sha in requirement.hashes:
            path = self.path_for(sha)
            if path is not None and parse_wheel_filename(path.name)[3] & supported:
                return path
        return None

    def add(self, file: Path, allowed: Sequence[str]) -> Path:
        sha = sha256_file(file)
        if sha not in allowed:
            raise WheelCacheError(f"{file.name}: sha256 {sha} is not in the lock")
        folder = self.root / "sha256" / sha
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / file.name
        if not target.exists():
            tmp = folder / f".{file.name}.tmp"
            shutil.copyfile(file, tmp)
            tmp.replace(target)
        return target

    def ensure(self, lock: Lock, torch_index_base: str | None = DEFAULT_TORCH_INDEX) -> list[Path]:
        """One cached wheel per locked requirement; downloads only what is missing.

        Files come through pip's configuration (pip.conf, PIP_* variables); requirements
        with a local label (torch 2.13.0+cpu) also get `<torch_index_base>/<flavour>`.
        """
        found: dict[str, Path] = {}
        missing: list[Requirement] = []
        for req in lock.requirements:
            path = self._compatible(req)
            if path is None:
                missing.append(req)
            else:
                found[req.name] = path
        labelled = [r for r in missing if r.local_label]
        plain = [r for r in missing if not r.local_label]
        extra = (
            [f"{torch_index_base.rstrip('/')}/{lock.torch_index}"]
            if lock.torch_index and torch_index_base
            else []
        )
        for group, indexes in ((plain, []), (labelled, extra)):
            if group:
                found.update(self._download(group, indexes))
        return [found[r.name] for r in lock.requirements]

    def _download(self, group: list[Requirement], extra_indexes: list[str]) -> dict[str, Path]:
        with tempfile.TemporaryDirectory(prefix="autoglm-wheels-") as tmp:
            reqs = Path(tmp) / "requirements.txt"
            reqs.write_text("".join(f"{r.line()}\n" for r in group))
            out = Path(tmp) / "dl"
            argv = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "--disable-pip-version-check",
                "-d",
                str(out),
                "-r",
                str(reqs),
            ]
            for url in extra_indexes:
                argv += ["--extra-index-url", url]
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
                raise WheelCacheError(
                    f"pip download of {len(group)} locked wheels failed (pip's configuration"
                    f"{' plus ' + ', '.join(extra_indexes) if extra_indexes else ''}):\n{tail}"
                )
            by_name = {r.name: r for r in group}
            stored: dict[str, Path] = {}
            for file in out.glob("*.whl"):
                name = canonicalize_name(parse_wheel_filename(file.name)[0])
                if name in by_name:
                    stored[name] = self.add(file, by_name[name].hashes)
            lost = sorted(set(by_name) - set(stored))
            if lost:
                raise WheelCacheError(f"pip download did not produce: {', '.join(lost)}")
            return stored


class PypiMirror(StandinLifecycle):
    """pypiserver serving `wheels` (links into the cache) on address:<free port>.

    No fallback to PyPI (`--disable-fallback`): a file the mirror lacks is a 404, the
    same answer a real mirror without that file gives.
    """

    def __init__(self, root: Path, address: str, wheels: Sequence[Path], port: int = 0) -> None:
        self.root = root
        self.address = address
        self.wheels = list(wheels)
        self.packages = root / "packages"
        self.pidfile = root / "pypiserver.pid"
        self.requested_port = port  # 0: a free one
        self.port = port
        self._server: LoopbackServer | None = None

    @property
    def index_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/simple/"

    def _fill(self) -> None:
        if self.packages.exists():
            shutil.rmtree(self.packages)
        self.packages.mkdir(parents=True)
        for wheel in self.wheels:
            target = self.packages / wheel.name
            try:
                os.link(wheel, target)  # same filesystem: no copy of a 200 MB torch
            except OSError:
                shutil.copyfile(wheel, target)

    def tamper(self, file_name: str) -> Path:
        """Serve different bytes under `file_name` (a fresh copy; the cache is untouched)."""
        target = self.packages / file_name
        data = bytearray(target.read_bytes())
        target.unlink()  # break the hard link before writing
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
        return target

    def start(self, detached: bool = False) -> Self:
        """Serve; `detached` keeps it up after this process (the demo), see stop()."""
        self._fill()
        self.port = self.requested_port or free_port(self.address)
        host = f"[{self.address}]" if ":" in self.address else self.address
        self._server = LoopbackServer(
            [
                sys.executable,
                "-m",
                "pypiserver",
                "run",
                "-i",
                self.address,
                "-p",
                str(self.port),
                "--disable-fallback",
                "-a",
                ".",
                "-P",
                ".",
                "--backend",
                "simple-dir",
                str(self.packages),
            ],
            log_path=self.root / "pypiserver.log",
            ready=HttpReady(f"http://{host}:{self.port}/health"),
            name="pypiserver",
            detached=detached,
            pidfile=self.pidfile,
        )
        self._server.start()
        return self
