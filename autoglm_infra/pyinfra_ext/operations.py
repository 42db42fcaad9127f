"""Operations that compare against a `Snapshot` read once per stage (see common/snapshot.py).

Each yields only the commands needed and calls host.noop on every branch that does
nothing, so a converged host costs no commands beyond its stage's one snapshot.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Generator, Iterable, Mapping, Sequence
from io import BytesIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.operation import OperationMeta

from autoglm_infra.common.apt_lock import apt_update_command, waiting_for_apt_lock
from autoglm_infra.common.managed_file import ManagedFile
from autoglm_infra.common.snapshot import (
    FileState,
    PackageState,
    Snapshot,
    parse_snapshot,
    snapshot_script,
)
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact

APT_ENV = "DEBIAN_FRONTEND=noninteractive"
# apt/dpkg are never killed half-way (a broken dpkg state is worse than a late one): a
# converge whose controller was lost lets them finish, and the next one waits for their lock
# (dpkg's here; the package lists' and apt-mark's in common/apt_lock.py).
APT_OPTS = (
    "-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef "
    "-o Dpkg::Options::=--force-confold -o DPkg::Lock::Timeout=300"
)


class SnapshotFact(TypedFact[Snapshot]):
    """Files (sha256, mode, owner), installed packages and commands, in one command."""

    def command(
        self,
        files: Sequence[str] = (),
        package_patterns: Sequence[str] = (),
        read_text: Sequence[str] = (),
        commands: Sequence[str] = (),
    ) -> str:
        return snapshot_script(list(files), list(package_patterns), list(read_text), list(commands))

    def process(self, output: list[str]) -> Snapshot:
        return parse_snapshot(output)


def fail_host(message: str) -> StringCommand:
    """A command that fails the operation with `message` on stderr.

    Raising OperationError inside an operation generator makes pyinfra print a gevent
    traceback; a failing command is reported like any other failed operation.
    """
    return StringCommand(f"printf '%s\\n' {shlex.quote(message)} >&2; exit 1")


def file_matches(
    current: FileState | None, content: bytes, mode: str, owner: str, group: str
) -> tuple[bool, bool]:
    """(content is right, metadata is right) for a file we manage."""
    if current is None:
        return False, False
    same_content = current.sha256 == hashlib.sha256(content).hexdigest()
    same_meta = (current.mode, current.owner, current.group) == (mode.lstrip("0"), owner, group)
    return same_content, same_meta


@operation()
def put_file(
    path: str,
    content: bytes,
    current: FileState | None,
    mode: str = "644",
    owner: str = "root",
    group: str = "root",
) -> Generator[Any, None, None]:
    """Upload `content` to `path` atomically (temp file + rename) when it differs.

    + path: destination on the host
    + content: exact bytes the file must hold
    + current: the file's state from this stage's snapshot (None when missing)
    + mode: octal mode, enforced on every run
    + owner: owner, enforced on every run
    + group: group, enforced on every run

    **Example:**

    .. code:: python

        put_file(name="nouveau blacklist", path="/etc/modprobe.d/x.conf",
                 content=b"blacklist nouveau\\n", current=snap.files.get("/etc/modprobe.d/x.conf"))
    """
    same_content, same_meta = file_matches(current, content, mode, owner, group)
    if same_content and same_meta:
        host.noop(f"{path} is up to date")
        return
    q = shlex.quote(path)
    if same_content:
        yield StringCommand(f"chmod {mode} {q} && chown {owner}:{group} {q}")
        return
    temp = f"{path}.autoglm-new"
    parent = shlex.quote(path.rsplit("/", 1)[0] or "/")
    qt = shlex.quote(temp)
    yield StringCommand(f"mkdir -p {parent}")
    if not int(mode, 8) & 0o004:
        # Create the temp file with its final mode first: an upload creates it with the
        # remote umask (often 644), which would expose a secret for a moment.
        yield StringCommand(f"install -m {mode} -o {owner} -g {group} /dev/null {qt}")
    yield FileUploadCommand(BytesIO(content), temp)
    # metadata before the rename: the file never appears at `path` with the wrong mode
    yield StringCommand(f"chmod {mode} {qt} && chown {owner}:{group} {qt} && mv -f {qt} {q}")


@operation()
def remove_file(path: str, current: FileState | None) -> Generator[Any, None, None]:
    """Remove `path` when it exists (for settings that were unset).

    + path: file to remove
    + current: its state from this stage's snapshot (None: already absent)

    **Example:**

    .. code:: python

        remove_file(name="pip proxy", path="/etc/pip.conf", current=snap.files.get("/etc/pip.conf"))
    """
    if current is None:
        host.noop(f"{path} is absent")
        return
    yield StringCommand(f"rm -f {shlex.quote(path)}")


@operation()
def apt_present(
    packages: Sequence[str], installed: dict[str, PackageState]
) -> Generator[Any, None, None]:
    """Install the packages that are missing (any version); nothing when all are there.

    + packages: names that must be installed
    + installed: from this stage's snapshot

    **Example:**

    .. code:: python

        apt_present(name="docker", packages=["docker-ce", "containerd.io"],
                    installed=state.snapshot.packages)
    """
    missing = [p for p in packages if p not in installed]
    if not missing:
        host.noop(f"{', '.join(packages)} installed")
        return
    yield StringCommand(apt_update_command())
    yield StringCommand(
        f"{APT_ENV} apt-get install {APT_OPTS} " + " ".join(map(shlex.quote, missing))
    )


def apt_changes(
    wanted: Sequence[tuple[str, str]], installed: dict[str, PackageState]
) -> tuple[list[str], list[str]]:
    """(packages to install at their version, wanted packages only missing their hold)."""
    to_install = [
        f"{n}={v}" for n, v in wanted if installed.get(n, PackageState("", False)).version != v
    ]
    to_hold = [
        n
        for n, v in wanted
        if n in installed and installed[n].version == v and not installed[n].held
    ]
    return to_install, to_hold


@operation()
def apt_pinned(
    packages: Sequence[tuple[str, str]],
    installed: dict[str, PackageState],
    remove: Sequence[str] = (),
    state_file: str | None = None,
    first: Sequence[tuple[str, str]] = (),
    refresh: Sequence[str] = (),
    update: bool = True,
) -> Generator[Any, None, None]:
    """Install packages at exact versions and apt-mark hold them; remove `remove`.

    A version change (an explicit upgrade) releases the holds it needs, installs, and
    holds again, in one apt transaction so the host never has half a stack.

    + packages: (name, exact Debian version) pairs
    + installed: from this stage's snapshot
    + remove: installed packages of a previous plan that the new plan replaces
    + state_file: where the names of the packages we hold are recorded (for the next plan)
    + first: pairs installed in their own transaction before `packages` (a version-locking
      package must be in place before apt resolves the driver), held like them
    + refresh: installed dependencies moved to their (pinned) candidate right after the
      transaction (those it did not remove), kept marked as automatically installed
    + update: False when the caller already ran apt-get update for this change

    **Example:**

    .. code:: python

        apt_pinned(name="driver", packages=[("nvidia-open", "580.95.05-1")],
                   installed=snap.packages, state_file="/var/lib/autoglm/nvidia-held")
    """
    every = [*first, *packages]
    to_install, to_hold = apt_changes(every, installed)
    to_remove = [n for n in remove if n in installed and n not in dict(every)]
    if not to_install and not to_hold and not to_remove and not refresh:
        host.noop(f"{len(every)} packages at their pinned versions and held")
        return
    names = [n for n, _ in every]
    if to_install or to_remove or refresh:
        release = [
            n
            for n in [*names, *to_remove, *refresh]
            if installed.get(n, PackageState("", False)).held
        ]
        if release:
            yield StringCommand(
                waiting_for_apt_lock("apt-mark unhold " + " ".join(map(shlex.quote, release)))
            )
        if update:
            yield StringCommand(apt_update_command())
        early = {f"{n}={v}" for n, v in first}
        transactions = [
            [s for s in to_install if s in early],
            [*(s for s in to_install if s not in early), *(f"{n}-" for n in to_remove)],
        ]
        install = f"{APT_ENV} apt-get install {APT_OPTS} --allow-downgrades"
        for args in filter(None, transactions):
            yield StringCommand(f"{install} " + " ".join(map(shlex.quote, args)))
        if refresh:
            # Only those still installed: the transaction may have replaced some (e.g.
            # the open kernel module by the proprietary one).
            names_q = " ".join(map(shlex.quote, refresh))
            mark_auto = waiting_for_apt_lock("apt-mark auto $R >/dev/null")
            yield StringCommand(
                "R=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' "
                f"{names_q} 2>/dev/null | awk '$1 ~ /^.i/ {{print $2}}'); "
                f'[ -z "$R" ] || {{ {install} $R && {mark_auto}; }}'
            )
        to_hold = names
    hold = "apt-mark hold " + " ".join(map(shlex.quote, to_hold)) + " >/dev/null"
    yield StringCommand(waiting_for_apt_lock(hold))
    if state_file:
        q = shlex.quote(state_file)
        listing = shlex.quote("\n".join(names) + "\n")
        yield StringCommand(f"mkdir -p $(dirname {q}) && printf %s {listing} > {q}")


def put_managed_files(
    files: Iterable[ManagedFile], current: Mapping[str, FileState | None], label: str
) -> dict[str, OperationMeta]:
    """`put_file` for each of a stage's files (named "<label>: <path>"), by path."""
    return {
        managed.path: put_file(
            name=f"{label}: {managed.path}",
            path=managed.path,
            content=managed.content,
            current=current.get(managed.path),
            mode=managed.mode,
            group=managed.group,
        )
        for managed in files
    }
