"""Keys for what our modules remember per pyinfra run (State) and host.

`pyinfra.state` is a proxy to the current State: `id(state)` is the proxy's, the same for
every run in a process and never the id of the State that pyinfra hands to callbacks. So
keys are taken from the State itself; a callback's `(id(state), host.name)` matches them.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.context import ctx_state


def run_key() -> int:
    """The current run (its State object)."""
    return id(ctx_state.get())


def host_key() -> tuple[int, str]:
    """The current host in the current run."""
    return (run_key(), host.name)
