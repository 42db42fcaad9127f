"""The host's converge lock, taken once per run by the first stage that changes the host.

    take_converge_lock("model", settings.converge_lock_wait)   # in a stage's prelude

Call it before the stage reads any fact: a run that had to wait then decides on what the
previous run left. The lock is held by a process on the host (converge_lock.holder_script)
reading an SSH channel the controller keeps open until it disconnects; see
autoglm_infra/common/converge_lock.py for why. Read-only deploys (doctor, verify, gpu_check,
preflight) and `--dry` previews never take it, so they never wait.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import gevent
from pyinfra import host, logger, state
from pyinfra.api import StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import Host
from pyinfra.api.state import BaseStateCallback, State
from pyinfra.connectors.util import make_unix_command_for_host
from pyinfra.context import ctx_state

from autoglm_infra.common.converge_lock import (
    HolderInfo,
    busy_message,
    holder_script,
    parse_holder,
    tied_command,
)
from autoglm_infra.pyinfra_ext.preview import previewing
from autoglm_infra.pyinfra_ext.run_key import host_key

# per pyinfra State (one per run, several in tests) and host
_held: dict[tuple[int, str], _Holder | None] = {}
# holders asked for at connect time, not yet waited for: the run's info and the files
_early: dict[tuple[int, str], tuple[HolderInfo, tuple[Any, Any, Any]]] = {}
_watching: set[int] = set()
_NOT_FOR_HOLDER = ("_get_pty", "_timeout", "_stdin", "_success_exit_codes")


@dataclass
class _Holder:
    channel: Any  # paramiko Channel running holder_script
    files: tuple[Any, Any, Any]  # its stdin, stdout, stderr
    pid: int
    info: HolderInfo
    reports: int = 0  # operations started; a pending report checks it is still the last


def _run_info(stage: str) -> HolderInfo:
    deploys = [a for a in sys.argv[1:] if a.endswith(".py") and "inventor" not in a]
    return HolderInfo(
        controller=socket.gethostname(),
        user=getpass.getuser(),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        deploy=" ".join(deploys) or "a deploy",
        stage=f"preparing the {stage} stage",
    )


def take_converge_lock(stage: str, wait_s: int) -> None:
    """Hold the current host's converge lock for the rest of this run (once per run).

    Waits up to `wait_s` seconds for another run's lock, then stops this host with a
    PyinfraError naming that run (controller, user, start, stage) and the fix. A holder
    already asked for when the host connected (start_converge_lock) is waited for here.
    """
    key = host_key()
    if key in _held:
        return
    client = getattr(host.connector, "client", None)
    if client is None or previewing():
        _held[key] = None  # no SSH (tests' @fake, @local) or a preview: nothing to hold
        return
    early = _early.pop(key, None)
    if early is not None:
        info, files = early
    else:
        info = _run_info(stage)
        files = _exec_holder(state, host, info, wait_s)
    _, stdout, stderr = files
    stdout.channel.settimeout(wait_s + 120)
    try:
        line = stdout.readline().strip()
        if line.startswith("BUSY"):
            holder = parse_holder(line.removeprefix("BUSY"))
            logger.warning(
                f"{host.print_prefix}converge lock: the host is being converged by "
                f"{holder.describe()}; waiting up to {wait_s} s (converge_lock_wait)"
            )
            line = stdout.readline().strip()
    except OSError as exc:  # socket.timeout included
        _close(*files)
        raise PyinfraError(
            f"{host.name}: no answer while taking the converge lock: {exc}"
        ) from None
    if line.startswith("TIMEOUT"):
        _close(*files)
        raise PyinfraError(
            busy_message(host.name, parse_holder(line.removeprefix("TIMEOUT")), wait_s)
        )
    if not line.startswith("LOCKED "):
        problem = stderr.read().decode(errors="replace").strip() or line or "no output"
        _close(*files)
        raise PyinfraError(
            f"{host.name}: cannot take the converge lock: {problem} (needs flock from "
            "util-linux and a writable /run/lock)"
        )
    stdout.channel.settimeout(None)
    _held[key] = _Holder(stdout.channel, files, int(line.split()[1]), info)
    _watch(ctx_state.get())


def start_converge_lock(run_state: State, target: Host, wait_s: int, then: str) -> None:
    """Ask for `target`'s converge lock now, without waiting: run `then` (sh, read-only) on
    the host once it is held. take_converge_lock waits for the answer later, so the host
    takes the lock and runs `then` while the controller loads the stages. Used at connect
    time, where no host is current (hence the explicit State and Host)."""
    info = _run_info("preflight")
    files = _exec_holder(run_state, target, info, wait_s, then)
    _early[(id(run_state), target.name)] = (info, files)
    _watch(run_state)


def holder_output(key: tuple[int, str]) -> Any | None:
    """The stdout of `key`'s holder (what `then` printed follows its LOCKED line)."""
    held = _held.get(key)
    return held.files[1] if held is not None else None


def _exec_holder(
    run_state: State, target: Host, info: HolderInfo, wait_s: int, then: str = ""
) -> tuple[Any, Any, Any]:
    arguments, _ = pop_global_arguments(run_state, target, {})
    kwargs = {
        k: v
        for k, v in arguments.items()
        if k in CONNECTOR_ARGUMENT_KEYS and k not in _NOT_FOR_HOLDER
    }
    command = make_unix_command_for_host(
        run_state, target, StringCommand(holder_script(info, wait_s, then)), **kwargs
    )
    client = target.connector.client  # type: ignore[attr-defined]  # SSH: callers checked
    stdin, stdout, stderr = client.exec_command(command.get_raw_value())
    return stdin, stdout, stderr


def _watch(run_state: State) -> None:
    if id(run_state) not in _watching:
        _watching.add(id(run_state))
        run_state.add_callback_handler(_StageReporter())


def holder_pid() -> int | None:
    """The current host's lock holder on the host, when this run holds the lock."""
    held = _held.get(host_key())
    return held.pid if held is not None else None


def tie_to_controller(command: str) -> str:
    """`command` killed on the host once this run's controller is gone (see tied_command)."""
    return tied_command(command, holder_pid())


# An operation is named in the holder record once it has run this long: a no-op re-run's
# forty-odd quick operations would otherwise cost a packet each on the controller and a
# rewrite of the record (an `mv`) each on the host, while only a long step is worth naming.
REPORT_AFTER_S = 0.25


class _StageReporter(BaseStateCallback):
    """Keeps the holder record at the operation this run is executing, for other operators."""

    @staticmethod
    def operation_host_start(state: State, host: Host, op_hash: Any) -> None:
        held = _held.get((id(state), host.name))
        if held is None:
            return
        names = sorted(state.get_op_meta(op_hash).names)
        held.info = replace(held.info, stage=", ".join(names) or "an operation")
        held.reports += 1
        gevent.spawn_later(REPORT_AFTER_S, _report_if_still_running, held, held.reports)

    @staticmethod
    def host_disconnect(state: State, host: Host) -> None:
        early = _early.pop((id(state), host.name), None)
        if early is not None:  # the run ended before it needed the lock (bad input, say)
            _close(*early[1])
        held = _held.pop((id(state), host.name), None)
        if held is not None:
            held.reports += 1  # a pending report finds itself outdated
            _close(*held.files)  # the holder removes its record and exits


def _report_if_still_running(held: _Holder, report: int) -> None:
    if held.reports != report:
        return  # that operation has ended (or the host disconnected) in the meantime
    try:
        held.files[0].write(held.info.line() + "\n")
        held.files[0].flush()
    except OSError:
        pass  # the record is informative only; the lock itself is unaffected


def _close(*files: Any) -> None:
    """Close paramiko files now: closed later by the garbage collector, after the transport
    went away, they print a traceback at exit."""
    for file in files:
        with contextlib.suppress(Exception):
            file.close()
        file.close = _closed  # paramiko's __del__ closes again: after the transport, it raises


def _closed() -> None:
    return None
