"""Waiting for a state: poll the exact condition that is relied on next, with a deadline.

Tests and testbed code wait through `wait_until` instead of fixed sleeps, so a loaded
machine only makes them slower, never wrong; and a timeout names what was awaited and
what was seen last. States that systemd and Docker pass through (`activating`,
`restarting`, `starting`) are never asserted: the tests wait past them to the final one.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from autoglm_testbed.hosts import SandboxHost

T = TypeVar("T")

# Generous: a deadline only bounds a failure; under load the normal case takes longer.
DEFAULT_TIMEOUT = 180.0


class WaitTimeout(AssertionError):
    """The awaited state did not come within the deadline (a test failure, not an error)."""


def wait_until(
    probe: Callable[[], T],
    ready: Callable[[T], bool],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    step: float = 0.5,
) -> T:
    """Call `probe` until `ready(value)`; return that value.

    Raises WaitTimeout naming `what` and the last value seen once `timeout` passes.

    Example: wait_until(lambda: unit_properties(host, UNIT, "ActiveState"),
                        lambda p: p["ActiveState"] == "active", f"{UNIT} active")
    """
    started = time.monotonic()
    while True:
        seen = probe()
        if ready(seen):
            return seen
        waited = time.monotonic() - started
        if waited >= timeout:
            raise WaitTimeout(f"waited {waited:.0f} s for {what}; last seen: {seen!r}")
        time.sleep(step)


def unit_properties(host: SandboxHost, unit: str, *props: str) -> dict[str, str]:
    """`systemctl show -p ...` of one unit on a sandbox host, as a dict."""
    args = " ".join(f"-p {p}" for p in props)
    out = host.ssh(f"systemctl show {args} {shlex.quote(unit)}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def container_state(host: SandboxHost, name: str) -> dict[str, object]:
    """`docker inspect` of one container ({} while it does not exist)."""
    result = host.ssh(f"docker inspect {shlex.quote(name)}", check=False)
    if result.returncode != 0:
        return {}
    return dict(json.loads(result.stdout)[0])


def health_of(doc: dict[str, object]) -> str:
    """The Docker health status of an inspected container ('' when none)."""
    state = doc.get("State")
    health = state.get("Health") if isinstance(state, dict) else None
    return str(health.get("Status", "")) if isinstance(health, dict) else ""
