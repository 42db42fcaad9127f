"""Slow tests: run only when asked for with `-m slow` (never in `make test` / `make unit`)."""

from __future__ import annotations

import pytest

SLOW = "slow: downloads GBs (the production GPU lock); run with `pytest -m slow tests/slow`"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", SLOW)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect slow tests unless the -m expression names them without 'not'."""
    expression = config.getoption("markexpr") or ""
    if "slow" in expression and "not slow" not in expression:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
