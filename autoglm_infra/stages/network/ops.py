"""Operations of the proxy and mirrors stage beyond put_file / remove_file."""

from __future__ import annotations

import shlex
from collections.abc import Generator, Sequence
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, operation


@operation()
def remove_paths(paths: Sequence[str]) -> Generator[Any, None, None]:
    """Remove files an earlier run installed and the configuration no longer names.

    + paths: absolute paths, already known to be stale (e.g. from a state file)

    **Example:**

    .. code:: python

        remove_paths(name="stale sources", paths=stale)
    """
    if not paths:
        host.noop("nothing stale to remove")
        return
    yield StringCommand("rm -f " + " ".join(shlex.quote(p) for p in paths))


@operation()
def move_files(moves: Sequence[tuple[str, str]]) -> Generator[Any, None, None]:
    """Rename files (parking the distro's apt sources under a mirror, or restoring them).

    + moves: (from, to) pairs; each target directory is created first

    **Example:**

    .. code:: python

        move_files(name="park sources", moves=[("/etc/apt/sources.list.d/ubuntu.sources",
                   "/etc/apt/autoglm-parked/ubuntu.sources")])
    """
    if not moves:
        host.noop("apt sources already where they belong")
        return
    for source, target in moves:
        parent = shlex.quote(target.rsplit("/", 1)[0] or "/")
        yield StringCommand(
            f"mkdir -p {parent} && mv -f {shlex.quote(source)} {shlex.quote(target)}"
        )
