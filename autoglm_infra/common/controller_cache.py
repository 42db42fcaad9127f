"""The controller's cache directory (~/.cache/autoglm-infra/NAME, 0700) and its files (0600).

Only what can be read again from its source goes there; every caller treats a missing,
unreadable or unwritable entry as a miss, never as an error.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def cache_dir(name: str) -> Path:
    """$XDG_CACHE_HOME/autoglm-infra/NAME (~/.cache when unset); not created here."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "autoglm-infra" / name


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, the file 0600 in 0700 directories (OSError raised)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prune_unused(directory: Path, max_age_s: float, now: float | None = None) -> list[Path]:
    """Remove the files in `directory` not modified (or touched on use) for `max_age_s`
    seconds: entries of hosts and keys long gone. Returns what was removed; errors skip."""
    cutoff = (time.time() if now is None else now) - max_age_s
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for path in entries:
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed
