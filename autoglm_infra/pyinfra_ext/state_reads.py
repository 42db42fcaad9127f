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

The record lives on the controller (~/.cache/autoglm-infra/state-reads, 0700/0600): fact
commands name paths and package patterns, never secrets, and a lost record only costs
one slower converge.
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
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_state

from autoglm_infra.common.batched_reads import (
    batch_script,
    decode_record,
    encode_record,
    split_batch,
)
from autoglm_infra.common.controller_cache import cache_dir, prune_unused, write_private
from autoglm_infra.pyinfra_ext.run_key import host_key
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact

T = TypeVar("T")

# A record not used for this long belongs to a host or a deploy long gone.
RECORD_MAX_AGE_S = 30 * 24 * 3600

# per pyinfra State and host: the batch's outputs, and the reads made in this run
_batches: dict[tuple[int, str], dict[str, list[str]]] = {}
_reads: dict[tuple[int, str], list[str]] = {}


def _enabled() -> bool:
    return (
        os.environ.get("AUTOGLM_STATE_PREFETCH", "1") != "0"
        and getattr(host.connector, "client", None) is not None
    )


def _collecting() -> bool:
    return bool(ctx_state.get().current_stage == StateStage.Prepare)


def record_path() -> Path:
    """The current host's record: one per host, connection and deploy files."""
    deploys = [a for a in sys.argv[1:] if a.endswith(".py") and "inventor" not in a]
    identity = [
        host.name,
        str(host.data.get("ssh_hostname") or ""),
        str(host.data.get("ssh_port") or ""),
        str(host.data.get("ssh_user") or ""),
        *deploys,
    ]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
    return cache_dir("state-reads") / f"{digest}.json"


def prefetch_state_reads() -> None:
    """Run the reads of the host's last converge as one remote command (once per run)."""
    key = host_key()
    if key in _batches or not _enabled() or not _collecting():
        return
    _batches[key] = {}
    path = record_path()
    try:
        commands = decode_record(path.read_text())
        os.utime(path)  # in use: kept by prune_unused
    except OSError:
        return  # no record yet: this converge reads one by one and writes it
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


def remember_state_reads() -> None:
    """Write the reads of this converge as the host's record, if they changed."""
    key = host_key()
    reads = _reads.get(key)
    if not reads or not _enabled():
        return
    path = record_path()
    try:
        if path.exists() and decode_record(path.read_text()) == reads:
            return
        write_private(path, encode_record(reads).encode())
        prune_unused(path.parent, RECORD_MAX_AGE_S)  # a new record: others may be long gone
    except OSError as exc:  # a cache: the next converge reads one by one
        logger.debug(f"{host.name}: state-read record not written: {exc}")
