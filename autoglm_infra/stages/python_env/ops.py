"""pyinfra layer of the python env stage: one fact, and the operations that use it.

`PythonEnvFact` reads, in ONE remote command, everything the stage decides on: the
interpreter's version and whether it can make venvs, the service user, the cache
directories, where the venv link points, the lock digest recorded in that venv and its
installed distributions with their local labels (`torch-2.9.0+cu128.dist-info`; pyinfra's
PipPackages fact runs pip and drops the label). No pip runs unless the lock changed.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator, Mapping, Sequence
from io import BytesIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation

from autoglm_infra.common.apt_lock import apt_update_command
from autoglm_infra.common.hash_lock import Lock
from autoglm_infra.pyinfra_ext.converge_lock import tie_to_controller
from autoglm_infra.pyinfra_ext.operations import APT_ENV, APT_OPTS
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.python_env.venv import (
    STAMP_FILE,
    VenvState,
    build_script,
    builds_dir,
    needs_build,
    next_build_path,
    parse_dist_info,
)

NOLOGIN = "/usr/sbin/nologin"


def python_env_script(interpreter: str, venv_dir: str, user: str, dirs: Sequence[str]) -> str:
    i, v = shlex.quote(interpreter), shlex.quote(venv_dir)
    # One interpreter start. ensurepip is found only with Debian's python3-venv (which
    # brings the wheels it installs); finding it, not importing it, costs 30 ms less.
    probe = (
        "import sys, importlib.util\nprint('PYV %d.%d.%d' % sys.version_info[:3])\n"
        "print('PYVENV %d' % (importlib.util.find_spec('ensurepip') is not None))"
    )
    parts = [
        "export LC_ALL=C",
        f"[ -x {i} ] && {i} -c {shlex.quote(probe)} 2>/dev/null",
        f'getent passwd {shlex.quote(user)} | awk -F: \'{{print "PYUSER " $3 " " $6 " " $7}}\'',
        *(f"[ -d {shlex.quote(d)} ] && stat -c 'PYDIR %a %U %G %n' {shlex.quote(d)}" for d in dirs),
        f'[ -L {v} ] && echo "PYLINK $(readlink {v})"',
        f'[ -f {v}/{STAMP_FILE} ] && echo "PYSTAMP $(cat {v}/{STAMP_FILE})"',
        f"for d in {v}/lib/python3*/site-packages/*.dist-info; do "
        '[ -d "$d" ] && echo "PYDIST ${d##*/}"; done',
        "true",
    ]
    return "; ".join(parts)


def parse_python_env(lines: Sequence[str]) -> VenvState:
    version = None
    has_venv = False
    user = None
    dirs: dict[str, tuple[str, str, str]] = {}
    link = stamp = None
    dists: list[str] = []
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag == "PYV":
            version = rest.strip()
        elif tag == "PYVENV":
            has_venv = rest.strip() == "1"
        elif tag == "PYUSER":
            uid, home, shell = ([*rest.split(" ", 2), "", ""])[:3]
            user = (uid, home, shell)
        elif tag == "PYDIR":
            mode, owner, group, path = rest.split(" ", 3)
            dirs[path] = (mode, owner, group)
        elif tag == "PYLINK":
            link = rest
        elif tag == "PYSTAMP":
            stamp = rest.strip()
        elif tag == "PYDIST":
            dists.append(rest.strip())
    return VenvState(version, has_venv, user, dirs, link, stamp, parse_dist_info(dists))


class PythonEnvFact(TypedFact[VenvState]):
    """Interpreter, service user, cache dirs, venv link, lock stamp, installed dists."""

    def command(self, interpreter: str, venv_dir: str, user: str, dirs: Sequence[str] = ()) -> str:
        return python_env_script(interpreter, venv_dir, user, list(dirs))

    def process(self, output: list[str]) -> VenvState:
        return parse_python_env(output)


@operation()
def service_user(
    user: str, home: str, current: tuple[str, str, str] | None
) -> Generator[Any, None, None]:
    """A system user with no login shell whose home is `home` (created empty, not copied).

    + user: user name
    + home: its home directory
    + current: (uid, home, shell) from the snapshot, None when missing

    **Example:**

    .. code:: python

        service_user(name="user", user="autoglm", home="/var/cache/autoglm",
                     current=state.user)
    """
    q, h = shlex.quote(user), shlex.quote(home)
    if current is None:
        yield StringCommand(
            f"useradd --system --user-group --home-dir {h} --no-create-home --shell {NOLOGIN} {q}"
        )
        return
    _, cur_home, cur_shell = current
    if (cur_home, cur_shell) == (home, NOLOGIN):
        host.noop(f"user {user} exists without a login shell")
        return
    yield StringCommand(f"usermod --home {h} --shell {NOLOGIN} {q}")


@operation()
def owned_dirs(
    paths: Sequence[str],
    owner: str,
    mode: str,
    current: Mapping[str, tuple[str, str, str]],
) -> Generator[Any, None, None]:
    """Directories that exist with `owner:owner` and `mode` (e.g. the service's caches).

    + paths: directories
    + owner: user and group that own them
    + mode: octal mode
    + current: path -> (mode, owner, group) from the snapshot

    **Example:**

    .. code:: python

        owned_dirs(name="caches", paths=dirs, owner="autoglm", mode="0750",
                   current=state.dirs or {})
    """
    wrong = [p for p in paths if current.get(p) != (mode.lstrip("0"), owner, owner)]
    if not wrong:
        host.noop(f"{len(paths)} directories owned by {owner}")
        return
    q = " ".join(shlex.quote(p) for p in wrong)
    yield StringCommand(f"install -d -m {mode} -o {owner} -g {owner} {q} && chmod {mode} {q}")


@operation()
def venv_module(has_venv_module: bool, interpreter: str) -> Generator[Any, None, None]:
    """Debian/Ubuntu ship `python3 -m venv` (ensurepip) in python3-venv; install it if missing.

    + has_venv_module: the interpreter can bootstrap pip
    + interpreter: the interpreter (for the message)

    **Example:**

    .. code:: python

        venv_module(name="venv module", has_venv_module=state.has_venv_module,
                    interpreter="/usr/bin/python3")
    """
    if has_venv_module:
        host.noop(f"{interpreter} can create venvs")
        return
    yield StringCommand(
        f"{apt_update_command()} && {APT_ENV} apt-get install {APT_OPTS} python3-venv"
    )


@operation()
def locked_venv(
    lock: Lock,
    interpreter: str,
    venv_dir: str,
    digest: str,
    pip_args: Sequence[str],
    state: VenvState,
) -> Generator[Any, None, None]:
    """Install `lock` into a new venv beside the one in service, check it, swap the link.

    Runs pip only when the venv in service was not built from this lock (or drifted).
    A failed install or check removes the new build and leaves the old venv serving.

    + lock: the hash lock to install
    + interpreter: python that makes the venv
    + venv_dir: the link the service uses
    + digest: build digest (lock and interpreter)
    + pip_args: index options for pip
    + state: from this stage's PythonEnvFact

    **Example:**

    .. code:: python

        locked_venv(name="venv", lock=load_lock("cpu", DEFAULT_LOCKS_DIR),
                    interpreter="/usr/bin/python3", venv_dir="/opt/autoglm/venv",
                    digest=build_digest(lock, "/usr/bin/python3"), pip_args=[], state=state)
    """
    why = needs_build(state, lock, venv_dir, digest)
    if why is None:
        host.noop(f"{venv_dir} matches lock {lock.profile} ({digest[:12]})")
        return
    new = next_build_path(venv_dir, digest, state.link_target)
    # root-owned directory, not /tmp: no other user can plant a link at the upload path
    builds = builds_dir(venv_dir)
    upload = f"{builds}/.lock-{digest[:16]}.txt"
    yield StringCommand(f"mkdir -p {shlex.quote(builds)} && chmod 755 {shlex.quote(builds)}")
    yield FileUploadCommand(BytesIO(lock.requirements_text().encode()), upload)
    script = build_script(lock, interpreter, venv_dir, digest, new, upload, pip_args)
    yield StringCommand(tie_to_controller(script))  # a lost controller leaves no pip behind
