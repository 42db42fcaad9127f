"""A converge's state reads of one host in one remote command (common/batched_reads.py).

    prefetch_state_reads()                       # converge lock held, before the first read
    snapshot = read_state(SnapshotFact, files=[...])   # instead of host.get_fact
    remember_state_reads()                       # the host's operations are collected

Batched outputs are used only while pyinfra collects operations: nothing has changed the
host yet, and the converge lock keeps other converges out, so a stage gets what its own
read would have printed a moment later. A read the batch lacks (the first converge from
this controller, or a configuration change altered what a stage reads) goes to the host
on its own as before and is in the record for the next converge. Only SSH hosts take part
(@local and the tests' fake hosts read as before). AUTOGLM_STATE_PREFETCH=0 turns it off.

When the host connects (config.py wraps pyinfra's SSH connector), a host with a record
gets the batch together with its converge lock request: the holder runs it once the lock
is held, while the controller is still importing and validating, and prefetch_state_reads
reads its output from the holder's channel. So a no-op re-run waits for neither the lock
nor the reads.

The closing check (the smoke test, planned with plan_check) starts at the same time, beside
the reads; the verify stage takes its answer (early_check) only if no operation of this
run changed the host before it, so the host is still as the check saw it with the lock
held. After any change the check runs again, as before, and the early answer is ignored
(the holder, and with it the lock, ends only once that early check has; the smoke test's
own tries and timeouts bound it). A no-op re-run thus sends no command of its own.

The record lives on the controller (~/.cache/autoglm-infra/state-reads, 0700/0600): fact
commands name paths and package patterns, the smoke test its URL, model and key file,
never secrets; a lost record only costs one slower converge.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, TypeVar

from pyinfra import host, logger
from pyinfra.api import StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.host import Host
from pyinfra.api.state import State, StateStage
from pyinfra.context import ctx_host, ctx_state

from autoglm_infra.common.batched_reads import (
    DONE,
    StateRecord,
    batch_script,
    check_marker,
    decode_record,
    early_script,
    encode_record,
    split_batch,
)
from autoglm_infra.common.controller_cache import cache_dir, prune_unused, write_private
from autoglm_infra.common.converge_lock import DEFAULT_WAIT_S, MAX_WAIT_S
from autoglm_infra.pyinfra_ext.converge_lock import holder_output, start_converge_lock
from autoglm_infra.pyinfra_ext.preview import previewing
from autoglm_infra.pyinfra_ext.run_key import host_key
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact

T = TypeVar("T")

# A record not used for this long belongs to a host or a deploy long gone.
RECORD_MAX_AGE_S = 30 * 24 * 3600

# per pyinfra State and host: the batch's outputs, and the reads made in this run
_batches: dict[tuple[int, str], dict[str, list[str]]] = {}
_reads: dict[tuple[int, str], list[str]] = {}
# closing checks (the smoke test) planned in this run, recorded after the reads
_checks: dict[tuple[int, str], list[str]] = {}
# what the lock holder runs (sent at connect time): marker and commands, reads and checks
_early_batches: dict[tuple[int, str], tuple[str, list[str]]] = {}
_early_checks: dict[tuple[int, str], tuple[str, list[str]]] = {}
_connected: set[tuple[int, str]] = set()  # hosts whose first connection was seen
READS_WITH_THE_LOCK = "state reads ran with the converge lock request"
CHECK_WITH_THE_LOCK = "closing check ran with the converge lock request, nothing changed since"
BATCH_TIMEOUT_S = 120  # reads take well under a second; a stuck one is read on its own


def _enabled() -> bool:
    return (
        os.environ.get("AUTOGLM_STATE_PREFETCH", "1") != "0"
        and getattr(host.connector, "client", None) is not None
    )


def _collecting() -> bool:
    return bool(ctx_state.get().current_stage == StateStage.Prepare)


def record_path(target: Host | None = None) -> Path:
    """A host's record (the current host's by default): one per host, connection and
    deploy files."""
    target = target or host
    deploys = [a for a in sys.argv[1:] if a.endswith(".py") and "inventor" not in a]
    identity = [
        target.name,
        str(target.data.get("ssh_hostname") or ""),
        str(target.data.get("ssh_port") or ""),
        str(target.data.get("ssh_user") or ""),
        *deploys,
    ]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    return cache_dir("state-reads") / f"{digest}.json"


def start_state_reads_at_connect(run_state: State, target: Host) -> None:
    """Send the batch with the converge lock request as soon as `target` is connected
    (the first time in this run).

    Only for a host with a record for these deploy files (its converge took the lock
    before) and a plain integer converge_lock_wait (anything else is left to the settings
    check). The host then takes the lock and reads while the controller loads the stages;
    take_converge_lock and prefetch_state_reads pick up the answers."""
    key = (id(run_state), target.name)
    if key in _connected:
        return  # a reconnect (after a reboot): the stages take the lock again themselves
    _connected.add(key)
    if os.environ.get("AUTOGLM_STATE_PREFETCH", "1") == "0" or previewing():
        return
    wait_s = target.data.get("converge_lock_wait", DEFAULT_WAIT_S)
    if type(wait_s) is not int or not 0 <= wait_s <= MAX_WAIT_S:
        return
    record = _record(target)
    if not record.reads:
        return
    marker = f"autoglm-batch-{secrets.token_hex(8)}"
    script = early_script(record.reads, record.checks, marker)
    start_converge_lock(run_state, target, wait_s, script)
    _early_batches[key] = (marker, list(record.reads))
    if record.checks:
        _early_checks[key] = (check_marker(marker), list(record.checks))


def _record(target: Host | None = None) -> StateRecord:
    path = record_path(target)
    try:
        record = decode_record(path.read_text())
        os.utime(path)  # in use: kept by prune_unused
    except OSError:
        return StateRecord()  # no record yet: this converge reads one by one and writes it
    return record


def _batch_from_holder(key: tuple[int, str]) -> dict[str, list[str]] | None:
    """The batch the lock holder ran (start_state_reads_at_connect), read from its output."""
    marker, commands = _early_batches.pop(key, (None, []))
    stdout = holder_output(key)
    if marker is None or stdout is None:
        return None
    lines = _lines_until(stdout, f"{marker} {DONE}", BATCH_TIMEOUT_S)
    if lines is None:
        return {}  # each read is tried on its own
    logger.debug(f"{host.name}: {len(commands)} {READS_WITH_THE_LOCK}")
    return split_batch(lines, marker, commands)


def _lines_until(stdout: Any, end: str, timeout_s: float | None) -> list[str] | None:
    """The holder's output lines up to the line `end`; None when cut off or too slow."""
    lines: list[str] = []
    stdout.channel.settimeout(timeout_s)
    try:
        for line in iter(stdout.readline, ""):
            line = line.rstrip("\n")
            if line == end:
                return lines
            lines.append(line)
    except OSError as exc:  # socket.timeout included
        logger.debug(f"{host.name}: reading the converge lock holder's output failed: {exc}")
    finally:
        stdout.channel.settimeout(None)
    return None


def prefetch_state_reads() -> None:
    """Run the reads of the host's last converge as one remote command (once per run)."""
    key = host_key()
    if key in _batches or not _enabled() or not _collecting():
        return
    early = _batch_from_holder(key)
    if early is not None:
        _batches[key] = early
        return
    _batches[key] = {}
    commands = list(_record().reads)
    if not commands:
        return
    marker = f"autoglm-batch-{secrets.token_hex(8)}"
    arguments, _ = pop_global_arguments(ctx_state.get(), host, {})
    executor = {k: v for k, v in arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}
    try:
        ok, output = host.run_shell_command(
            StringCommand(batch_script(commands, marker)), **executor
        )
    except (OSError, TimeoutError) as exc:  # each read is tried again on its own
        logger.debug(f"{host.name}: batched state read failed: {exc}")
        return
    if ok:
        _batches[key] = split_batch(output.stdout_lines, marker, commands)


def read_state(fact: type[TypedFact[T]], **kwargs: Any) -> T:
    """`host.get_fact(fact, **kwargs)`, answered from the batch when it has this read."""
    key = host_key()
    if _enabled() and _collecting():
        command = str(fact().command(**kwargs))  # type: ignore[attr-defined]
        if command not in _reads.setdefault(key, []):
            _reads[key].append(command)
        lines = _batches.get(key, {}).get(command)
        if lines is not None:
            logger.debug(f"{host.name}: {fact.__name__} taken from the batched state read")
            return fact().process(lines)
    return host.get_fact(fact, **kwargs)


def plan_check(command: str) -> None:
    """Note the closing check `command` (a read-only command run after every change, the
    smoke test) for the host's record: the next converge starts it at connect time."""
    if _enabled() and _collecting():
        planned = _checks.setdefault(host_key(), [])
        if command not in planned:
            planned.append(command)


def early_check(command: str) -> list[str] | None:
    """The output of the closing check `command` as the lock holder ran it at connect
    time, if this run has changed nothing on the host since (then the host is as it was
    read); None when the check must run now."""
    key = host_key()
    marker, checks = _early_checks.pop(key, (None, []))
    if marker is None or command not in checks or _changed_in_this_run():
        return None
    stdout = holder_output(key)
    # no timeout of our own: the check bounds itself (the smoke test's tries and
    # timeouts), and running it again would only wait as long once more
    lines = _lines_until(stdout, f"{marker} {DONE}", None) if stdout is not None else None
    output = split_batch(lines or [], marker, checks).get(command)
    if output is not None:
        logger.debug(f"{host.name}: {CHECK_WITH_THE_LOCK}")
    return output


def _changed_in_this_run() -> bool:
    """Whether an operation of this run sent the host a command (failed ones included:
    they may have changed something before failing)."""
    ops = ctx_state.get().ops.get(ctx_host.get(), {})  # the Host itself, not the proxy
    return any(
        data.operation_meta.is_complete() and data.operation_meta.executed for data in ops.values()
    )


def remember_state_reads() -> None:
    """Write the reads and checks of this converge as the host's record, if they changed."""
    key = host_key()
    reads = _reads.get(key)
    if not reads or not _enabled():
        return
    record = StateRecord(tuple(reads), tuple(_checks.get(key, ())))
    path = record_path()
    try:
        if path.exists() and decode_record(path.read_text()) == record:
            return
        write_private(path, encode_record(record).encode())
        prune_unused(path.parent, RECORD_MAX_AGE_S)  # a new record: others may be long gone
    except OSError as exc:  # a cache: the next converge reads one by one
        logger.debug(f"{host.name}: state-read record not written: {exc}")


def enable_state_reads_at_connect() -> None:
    """Idempotently wrap pyinfra's SSH connector so that each new connection starts the
    host's lock and batch at once (start_state_reads_at_connect)."""
    from pyinfra.connectors.ssh import SSHConnector

    original = SSHConnector.connect
    if getattr(original, _MARK, False):
        return

    def connect(self: SSHConnector) -> None:
        original(self)
        if self.client is None:
            return
        try:
            start_state_reads_at_connect(self.state, self.host)
        except Exception as exc:  # the converge then takes the lock and reads as before
            logger.debug(f"{self.host.name}: state reads not started at connect: {exc}")

    setattr(connect, _MARK, True)
    SSHConnector.connect = connect  # type: ignore[method-assign]


_MARK = "_autoglm_state_reads_at_connect"
