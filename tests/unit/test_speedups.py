"""pyinfra_ext/speedups.py gives what pyinfra's originals give, on real call stacks."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any, get_type_hints

import pytest
from pyinfra.api import util
from pyinfra.api.arguments import AllArguments

from autoglm_infra.pyinfra_ext import speedups


def _both(state: Any) -> tuple[list[int], list[int]]:
    return util.get_operation_order_from_stack(state), speedups.operation_order_from_stack(state)


def _nested(depth: int, state: Any) -> tuple[list[int], list[int]]:
    if depth:
        return _nested(depth - 1, state)
    return _both(
        # a call spread over lines: the line pyinfra reports is where the call starts
        state,
    )


@pytest.mark.parametrize("deploy_file", [__file__, "/nonexistent/deploy.py", None])
@pytest.mark.parametrize("is_cli", [True, False])
def test_operation_order_matches_pyinfra(
    deploy_file: str | None, is_cli: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyinfra

    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=3)
    for depth in (0, 4):
        original, ours = _nested(depth, state)
        assert ours == original
        if deploy_file == __file__:  # real frames were read, not an empty stack
            assert len(ours) >= 3 + depth


def test_multiline_call_line_matches_pyinfra() -> None:
    state = SimpleNamespace(current_deploy_filename=__file__, current_op_file_number=0)
    results = [
        util.get_operation_order_from_stack(
            state,
        ),
        speedups.operation_order_from_stack(
            state,
        ),
    ]
    # the last entry is this test's own line: both read the line of their own call
    assert results[0][:-1] == results[1][:-1]
    assert results[1][-1] - results[0][-1] == 3


def test_global_arguments_are_pyinfra_s_and_installed_once() -> None:
    speedups.enable_pyinfra_speedups()
    speedups.enable_pyinfra_speedups()  # idempotent
    arguments = importlib.import_module("pyinfra.api.arguments")
    facts = importlib.import_module("pyinfra.api.facts")
    operation = importlib.import_module("pyinfra.api.operation")
    assert arguments.all_global_arguments() == list(get_type_hints(AllArguments).items())
    assert facts.all_global_arguments is arguments.all_global_arguments
    assert operation.get_operation_order_from_stack is speedups.operation_order_from_stack
