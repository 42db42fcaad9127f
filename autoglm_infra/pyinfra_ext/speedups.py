"""pyinfra's per-operation cost on the controller, made smaller without changing results.

pyinfra prepares every host's operations on one thread, so whatever an operation call
costs there is paid once per operation and host: about 40 operations per host, which is
what made a fleet's no-op re-run grow with the number of hosts (README "Performance").
Two costs dominate it in pyinfra 3.10, both avoidable:

- The operation's identity (`pyinfra.api.util.get_operation_order_from_stack`, the line
  numbers of its call stack) is read with `inspect.stack()` and `getframeinfo(frame)`,
  whose default context makes `inspect` find and read the source file of every frame
  (about 6 ms per operation here). The frames' own code object and line give the same
  numbers without reading any source; walking `f_back` from this frame gives the frames
  `inspect.stack()` lists without its per-frame file lookups (0.8 ms per operation).
- `pop_global_arguments` calls `all_global_arguments()`, which evaluates
  `typing.get_type_hints` on the same class for every operation and fact (about 0.7 ms).
  Its result depends only on that class, so it is computed once.

tests/unit/test_speedups.py compares both replacements with pyinfra's originals.
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import FrameType
from typing import Any

_MARK = "_autoglm_speedup"


def operation_order_from_stack(state: Any) -> list[int]:
    """pyinfra 3.10's get_operation_order_from_stack, reading each frame's code object."""
    import pyinfra
    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    # frame.f_lineno is what getframeinfo reports for a frame's current instruction, and
    # co_filename its file for deploy and package files that exist on disk
    frames: list[FrameType] = []
    frame: FrameType | None = sys._getframe()  # what inspect.stack() starts from, outwards
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    # from the first frame of the deploy file being loaded (pyinfra's loop ends on the
    # last frame when none is), or from the outermost frame when no file is loading
    start = 0
    if state.current_deploy_filename:
        files = [frame.f_code.co_filename for frame in frames]
        deploy = state.current_deploy_filename
        start = files.index(deploy) if deploy in files else len(frames) - 1
    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    line_numbers += [
        frame.f_lineno
        for frame in frames[start:]
        # this function's own frame is skipped as pyinfra's is (it lives in pyinfra's folder)
        if not frame.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)
        and frame.f_code is not _OWN_CODE
    ]
    del frames, frame
    return line_numbers


_OWN_CODE = operation_order_from_stack.__code__


def enable_pyinfra_speedups() -> None:
    """Idempotently install both replacements into pyinfra's modules."""
    # modules by name: pyinfra.api re-exports the `operation` decorator under its module's name
    operation = importlib.import_module("pyinfra.api.operation")
    arguments = importlib.import_module("pyinfra.api.arguments")
    facts = importlib.import_module("pyinfra.api.facts")
    if getattr(operation.get_operation_order_from_stack, _MARK, False):
        return
    hints = functools.cache(arguments.all_global_arguments)

    def all_global_arguments() -> list[tuple[str, type]]:
        return list(hints())

    for module, name, replacement in (
        (operation, "get_operation_order_from_stack", operation_order_from_stack),
        (arguments, "all_global_arguments", all_global_arguments),
        (facts, "all_global_arguments", all_global_arguments),  # imported there by name
    ):
        setattr(replacement, _MARK, True)
        setattr(module, name, replacement)
