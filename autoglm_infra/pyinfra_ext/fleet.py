"""One broken host never stops the rest, and every run ends with a line per host.

pyinfra already goes on with the other hosts when an operation fails or a host cannot be
reached (as long as --fail-percent allows), but an error raised while a host's operations
are collected (a stage refusing the host, a busy converge lock) ends the whole run before
any host changes. `isolated` turns such an error into a failure of that host alone; the
other hosts are collected and converged as usual.

At exit the CLI run prints "converged with N changes" / "failed at stage X: <one line>" /
"unreachable" per host; AUTOGLM_FLEET_SUMMARY=<file> also writes it as JSON (the rollout
reads it). pyinfra itself exits non-zero when any host failed.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import Host
from pyinfra.api.state import State, StateStage
from pyinfra.context import ctx_host, ctx_state

from autoglm_infra.common.fleet import (
    HostOutcome,
    format_summary,
    one_line,
    outcomes_to_json,
)
from autoglm_infra.pyinfra_ext.preview import previewing
from autoglm_infra.pyinfra_ext.run_key import host_key
from autoglm_infra.pyinfra_ext.settings import InvalidConfiguration

SUMMARY_ENV = "AUTOGLM_FLEET_SUMMARY"

# per pyinfra State (one per run, several in tests) and host: (stage, error in one line)
_failures: dict[tuple[int, str], tuple[str, str]] = {}
_summarised: set[int] = set()


def host_has_failed() -> bool:
    """The current host failed earlier in this run (a stage, a fact or its connection)."""
    return ctx_host.get() in state.failed_hosts or host_key() in _failures


@contextmanager
def isolated(stage: str) -> Iterator[None]:
    """Run a stage's collection for the current host; an error fails this host only.

    An invalid configuration stays fatal for the run (nothing changes on any host), and so
    does an unexpected exception, unless pyinfra already failed the host (a fact whose
    command failed), which usually is what caused it.
    """
    _summary_at_exit()
    try:
        yield
    except InvalidConfiguration:
        raise
    except PyinfraError as exc:
        fail_current_host(stage, str(exc))
        return
    except Exception as exc:
        if ctx_host.get() not in state.failed_hosts:
            raise
        fail_current_host(stage, f"{type(exc).__name__}: {exc}")
        return
    if ctx_host.get() in state.failed_hosts and host_key() not in _failures:
        fail_current_host(stage, "a command reading the host failed (its output is above)")


def fail_current_host(stage: str, error: str) -> None:
    """Take the current host out of this run; raises PyinfraError when no host is left or
    more failed than --fail-percent allows (pyinfra's own rule)."""
    current = ctx_host.get()  # the Host itself: `host` is pyinfra's proxy to it
    _failures[host_key()] = (stage, one_line(error))
    if not state.active_hosts - {current}:
        # the last host: end the run with its error, as a one-host run always did
        state.failed_hosts.add(current)
        raise PyinfraError(error) from None
    logger.error(f"{host.print_prefix}failed at stage {stage}: {error}")
    state.fail_hosts({current})


def _summary_at_exit() -> None:
    # Only for the CLI (it names the deploy file being run); not for API use or unit tests.
    current = ctx_state.get()
    if id(current) in _summarised or not current.current_deploy_filename:
        return
    _summarised.add(id(current))
    atexit.register(_print_summary, current)


def outcomes(st: State) -> list[HostOutcome]:
    """Each host of the run (inventory order, within --limit) and what happened to it."""
    found = []
    for h in st.inventory:
        if st.is_host_in_limit(h):
            # at exit no host is current; an OperationMeta reads its data through it
            with ctx_state.use(st), ctx_host.use(h):
                found.append(_outcome(st, h))
    return found


def _outcome(st: State, h: Host) -> HostOutcome:
    if h not in st.activated_hosts:
        return HostOutcome(h.name, "unreachable", error="no SSH connection (error above)")
    if (id(st), h.name) in _failures:
        stage, error = _failures[(id(st), h.name)]
        return HostOutcome(h.name, "failed", stage=stage, error=error)
    metas = [
        (op_hash, st.ops[h][op_hash].operation_meta)
        for op_hash in st.get_op_order()
        if op_hash in st.ops[h]
    ]
    for op_hash, meta in metas:
        if meta.is_complete() and not meta.did_succeed():
            name = sorted(st.op_meta[op_hash].names)[0] if st.op_meta[op_hash].names else "?"
            output = [line for line in meta.stderr_lines + meta.stdout_lines if line.strip()]
            error = output[-1] if output else "the operation failed (its output is above)"
            return HostOutcome(
                h.name, "failed", stage=name.split(":")[0], error=one_line(f"{name}: {error}")
            )
    if h in st.failed_hosts:
        return HostOutcome(h.name, "failed", stage="?", error="see the errors above")
    if st.current_stage not in (StateStage.Execute, StateStage.Disconnect):
        why = "dry run" if previewing() else "the run stopped before any change"
        planned = sum(1 for _, meta in metas if meta.will_change)
        return HostOutcome(h.name, "not converged", error=f"{why} ({planned} changes planned)")
    if not all(meta.is_complete() for _, meta in metas):
        done = sum(1 for _, meta in metas if meta.is_complete() and meta.did_change())
        return HostOutcome(
            h.name, "not converged", error=f"the run ended part-way ({done} changes made)"
        )
    changes = sum(1 for _, meta in metas if meta.did_change())
    return HostOutcome(h.name, "converged", changes=changes)


def _print_summary(st: State) -> None:
    try:
        found = outcomes(st)
    except Exception as exc:  # pyinfra's internals at exit: a summary is never a traceback
        print(f"\n(no per-host summary: {type(exc).__name__}: {exc})", file=sys.stderr)
        return
    if path := os.environ.get(SUMMARY_ENV):
        Path(path).write_text(outcomes_to_json(found) + "\n")
    print("\n" + format_summary(found) + "\n", file=sys.stderr, flush=True)
