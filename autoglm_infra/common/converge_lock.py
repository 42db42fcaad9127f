"""One converge at a time per host, and remote work that dies with its controller. Pure.

Why a holder process: pyinfra runs every operation as its own remote command, so no
single command lives for the whole converge. The controller therefore opens one extra
SSH channel per host that runs `holder_script`: it takes `flock` on LOCK_PATH (waiting
up to converge_lock_wait), writes who holds it to HOLDER_PATH and then blocks reading
its stdin. The controller never closes that channel until it disconnects, so the holder
exits, and the kernel drops the lock, exactly when the controller's SSH connection ends:
a finished run, Ctrl-C, SIGKILL or a crash alike. (A link that silently dies is noticed
by sshd only after its ClientAlive/TCP keepalive timeouts; until then the host counts
as taken, and the refusal names the holder's pid to end by hand.)

Long remote steps (venv build, model download, image load) run through `tied_command`:
in a process group of their own, watched by a small process that kills the group once
the holder is gone. So a lost controller leaves no writer behind; and each step also
takes a lock on its own directory, so a re-run waits for the killed step to be gone
before it touches that directory.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

LOCK_PATH = "/run/lock/autoglm-converge.lock"
HOLDER_PATH = "/run/lock/autoglm-converge.holder"
KEY_WAIT = "converge_lock_wait"
DEFAULT_WAIT_S = 600  # a venv build of the GPU lock can take ~7 minutes: longer than a stage
MAX_WAIT_S = 86400
TERM_GRACE_S = 10  # SIGTERM, then SIGKILL after this long
FIELDS = ("controller", "user", "started", "deploy", "stage")


@dataclass(frozen=True)
class HolderInfo:
    """Who holds a host's converge lock, as written into HOLDER_PATH."""

    controller: str = "?"  # host name of the controller machine
    user: str = "?"  # who ran pyinfra there
    started: str = "?"  # UTC, ISO 8601
    deploy: str = "?"  # the deploy files of that run
    stage: str = "?"  # the stage or operation it is at
    pid: str = "?"  # the holder process on the host

    def line(self) -> str:
        """One tab-separated line of key=value (tabs and newlines in values flattened)."""
        return "\t".join(f"{k}={_flat(getattr(self, k))}" for k in FIELDS)

    def describe(self) -> str:
        return (
            f"controller {self.controller} (user {self.user}), started {self.started}, "
            f"running {self.deploy}, at {self.stage!r} (holder pid {self.pid} on the host)"
        )


def _flat(value: str) -> str:
    return " ".join(str(value).split())


def parse_holder(text: str) -> HolderInfo:
    """HOLDER_PATH's content (or what follows BUSY/TIMEOUT); unknown fields stay '?'."""
    found: dict[str, str] = {}
    for part in text.strip().split("\t"):
        key, sep, value = part.partition("=")
        if sep and key in (*FIELDS, "pid") and value:
            found[key] = value
    return HolderInfo(**found)


def holder_script(info: HolderInfo, wait_s: int, then: str = "") -> str:
    """POSIX sh run as the holder: prints BUSY <holder> when it has to wait, then LOCKED
    <pid> or TIMEOUT <holder>; holds the lock until its stdin ends. Every stdin line
    replaces the holder record (the controller reports the operation it is at).

    `then` (sh) runs once the lock is held, after the LOCKED line, in a subshell reading
    nothing from the channel: the run's state reads and smoke test, sent with the lock
    request."""
    lock, rec = shlex.quote(LOCK_PATH), shlex.quote(HOLDER_PATH)
    return "\n".join(
        [
            "set -u",
            f"exec 9>>{lock} || exit 3",
            "if ! flock -n 9; then",
            f'  echo "BUSY $(cat {rec} 2>/dev/null)"',
            f'  flock -w {int(wait_s)} 9 || {{ echo "TIMEOUT $(cat {rec} 2>/dev/null)"; exit 4; }}',
            "fi",
            f'record() {{ printf \'%s\\tpid=%s\\n\' "$1" "$$" > {rec}.new && '
            f"mv -f {rec}.new {rec}; }}",
            f"record {shlex.quote(info.line())}",
            'echo "LOCKED $$"',
            # without the lock's descriptor: nothing it starts can keep the lock
            *([f"( exec 9>&-\n{then}\n) </dev/null"] if then else []),
            'while IFS= read -r line; do record "$line"; done',
            f"rm -f {rec}",  # still ours: the lock is dropped only when this shell exits
        ]
    )


def busy_message(host: str, holder: HolderInfo, wait_s: int) -> str:
    """Why a host was stopped, naming the holder, and what to do."""
    return (
        f"{host} is being converged by {holder.describe()}; waited {wait_s} s "
        f"({KEY_WAIT}) and stopped before reading or changing anything. Let that run "
        f"finish and converge again, or raise {KEY_WAIT}. If that controller is gone but "
        "its connection is still open on the host (a dropped network link is noticed by "
        f"sshd only after its keepalive timeouts), end it on the host: kill {holder.pid} "
        "(its long steps stop with it)."
    )


def tied_command(command: str, holder_pid: int | None, grace_s: int = TERM_GRACE_S) -> str:
    """`command` in a process group of its own that is killed (TERM, then KILL after
    `grace_s`) as soon as the converge lock holder `holder_pid` is gone: remote work
    never outlives its controller. Unchanged when there is no holder (no lock taken)."""
    if holder_pid is None:
        return command
    pid = int(holder_pid)
    watch = (
        f"tail --pid={pid} -f /dev/null; kill -TERM -$1 2>/dev/null; "
        f"sleep {int(grace_s)}; kill -KILL -$1 2>/dev/null"
    )
    gone = shlex.quote(
        f"autoglm: the converge lock holder (pid {pid}) is gone: this run lost its "
        "controller; nothing was started"
    )
    return "\n".join(
        [
            f"[ -d /proc/{pid} ] || {{ echo {gone} >&2; exit 1; }}",
            # a background job of a non-interactive shell is no group leader: setsid runs
            # the step in place, so $! leads the new session and process group
            f"setsid sh -c {shlex.quote(command)} &",
            "step=$!",
            f"setsid sh -c {shlex.quote(watch)} watch $step >/dev/null 2>&1 </dev/null &",
            "watcher=$!",
            'wait "$step"; rc=$?',
            'kill -TERM -"$watcher" 2>/dev/null',
            'exit "$rc"',
        ]
    )
