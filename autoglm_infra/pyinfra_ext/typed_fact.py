"""A fact that is never None: pyinfra hands a fact whose command printed nothing (or
failed) to the deploy as `default()`, which is None unless a fact says otherwise."""

from __future__ import annotations

from typing import TypeVar

from pyinfra.api import FactBase

T = TypeVar("T")


class TypedFact(FactBase[T]):
    """`default()` is what `process` makes of no output: an empty probe is an empty value."""

    def default(self) -> T:  # type: ignore[override]  # pyinfra calls it on an instance
        return self.process([])
