"""Run one of our operations on pyinfra's @fake connector and record what it did.

Used by the operation cases (tests/ops/<operation>/*.json, run by tests/ops/test_op_cases.py)
and by any operation test that cannot be written as data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from io import IOBase
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state

HOST = "@fake/gpu-1"


@dataclass
class OpRun:
    changed: bool
    # shell commands in order; an upload appears as "<upload REMOTE>", a command that
    # matched a canned host output (a read at execution time) as "<read MATCHER>"
    commands: list[str] = field(default_factory=list)
    uploads: dict[str, str] = field(default_factory=dict)  # remote path -> text or "<file P>"


def run_op(
    op: Callable[..., Any], host_output: Mapping[str, Any] | None = None, **kwargs: Any
) -> OpRun:
    """Add `op(**kwargs)` for one fake host, run it, and return what it executed.

    `host_output` maps a substring of a command to what the host prints for it (the
    fake connector's `fake_responses`); every other command succeeds silently.
    """
    responses = dict(host_output or {})
    data = {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": responses}
    inventory = Inventory(([(HOST, data)], {}))  # type: ignore[no-untyped-call]
    state = State(inventory, Config())  # type: ignore[no-untyped-call]
    state.set_stage(StateStage.Connect)
    connect_all(state)
    host = inventory.get_host(HOST)
    connector = host.connector
    run = OpRun(changed=False)
    original_run = connector.run_shell_command

    def record_command(command: Any, *args: Any, **kw: Any) -> Any:
        text = command if isinstance(command, str) else command.get_masked_value()
        read = next((m for m in responses if m in text), None)
        run.commands.append(text if read is None else f"<read {read}>")
        return original_run(command, *args, **kw)

    def record_upload(source: str | IOBase, remote: str, *args: Any, **kw: Any) -> bool:
        run.commands.append(f"<upload {remote}>")
        if isinstance(source, str):
            run.uploads[remote] = f"<file {source}>"
        else:
            data = source.read()
            run.uploads[remote] = data.decode() if isinstance(data, bytes) else str(data)
        return True

    connector.run_shell_command = record_command  # type: ignore[method-assign]
    connector.put_file = record_upload  # type: ignore[assignment,method-assign]
    state.set_stage(StateStage.Prepare)
    # add_op's own `state` parameter would swallow an operation argument named state
    with ctx_state.use(state), ctx_host.use(host):
        meta = op(**kwargs)
    state.set_stage(StateStage.Execute)
    run_ops(state)
    state.set_stage(StateStage.Disconnect)
    run.changed = meta.did_change()
    disconnect_all(state)
    return run


def matches(patterns: list[str], commands: list[str]) -> bool:
    """Each command matches its regex in full (for commands too long to spell out)."""
    return len(patterns) == len(commands) and all(
        re.fullmatch(p, c, re.DOTALL) for p, c in zip(patterns, commands, strict=True)
    )
