"""The holder record names an operation only once it has run for REPORT_AFTER_S.

The reporter is driven as pyinfra drives it (operation_host_start per operation, then
host_disconnect) against a recording stand-in for the holder channel's stdin.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gevent
import pytest

from autoglm_infra.common.converge_lock import HolderInfo
from autoglm_infra.pyinfra_ext import converge_lock
from autoglm_infra.pyinfra_ext.converge_lock import REPORT_AFTER_S, _Holder, _StageReporter


class Stdin:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed = False

    def write(self, text: str) -> None:
        if self.closed:
            raise OSError("File is closed")
        self.lines.append(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class State:
    def get_op_meta(self, op_hash: str) -> Any:
        return SimpleNamespace(names={op_hash})


@pytest.fixture()
def run() -> Any:
    state, host, stdin = State(), SimpleNamespace(name="h1"), Stdin()
    key = (id(state), host.name)
    converge_lock._held[key] = _Holder(None, (stdin, Stdin(), Stdin()), 42, HolderInfo())
    yield state, host, stdin
    converge_lock._held.pop(key, None)


def stages(stdin: Stdin) -> list[str]:
    return [line.split("stage=")[1].strip() for line in stdin.lines]


def test_quick_operations_are_not_reported_a_long_one_is(run: Any) -> None:
    state, host, stdin = run
    for op in ("Network: proxy", "Network: mirrors", "Model: pull"):
        _StageReporter.operation_host_start(state, host, op)
        gevent.sleep(0.01)  # quick operations
    assert stdin.lines == []  # nothing written while each was still short
    gevent.sleep(REPORT_AFTER_S + 0.1)  # the pull runs long
    assert stages(stdin) == ["Model: pull"]


def test_a_report_due_after_the_disconnect_writes_nothing(run: Any) -> None:
    state, host, stdin = run
    _StageReporter.operation_host_start(state, host, "Verify: smoke test")
    _StageReporter.host_disconnect(state, host)
    gevent.sleep(REPORT_AFTER_S + 0.1)
    assert stdin.lines == [] and stdin.closed
