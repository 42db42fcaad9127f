"""Start real stand-in server processes on loopback and stop them reliably.

A server is spawned in its own session (hence its own process group) so that stopping
it also stops whatever it forked, and so that nothing else is ever signalled: we only
signal the process group whose leader we spawned and whose PID we recorded.

Two lifetimes are supported:

* attached (default): an ``atexit`` hook stops servers the caller forgot, so a crashed
  test run does not leave listeners behind;
* detached: for a long-running demo. The server outlives the Python process; a JSON
  pidfile records PID, start time and command line, and :func:`stop_pidfile` stops it
  later, only if that PID still is the process we started (guards against PID reuse).

Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "HttpReady",
    "LoopbackServer",
    "ReadinessCheck",
    "ServerError",
    "ServerStartError",
    "TcpReady",
    "free_port",
    "stop_pidfile",
]

ReadinessCheck = Callable[[], bool]
"""Returns True once the server answers. Must be quick and never raise."""


class ServerError(RuntimeError):
    """A stand-in server could not be started or stopped."""


class ServerStartError(ServerError):
    """The server exited early or did not become ready in time; message has the log tail."""


@dataclass(frozen=True)
class TcpReady:
    """Ready when a TCP connection to host:port succeeds."""

    host: str
    port: int
    timeout: float = 0.5

    def __call__(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout):
                return True
        except OSError:
            return False

    def __str__(self) -> str:
        return f"TCP connect to {self.host}:{self.port}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx then surfaces as HTTPError with its own code


# Environment proxies (http_proxy, ...) must never intercept a loopback probe.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


@dataclass(frozen=True)
class HttpReady:
    """Ready when GET url answers with one of the expected statuses (redirects not followed)."""

    url: str
    status: int | Collection[int] = 200
    timeout: float = 2.0

    def _expected(self) -> Collection[int]:
        return (self.status,) if isinstance(self.status, int) else self.status

    def __call__(self) -> bool:
        try:
            with _NO_PROXY_OPENER.open(self.url, timeout=self.timeout) as resp:
                code: int = resp.status
        except urllib.error.HTTPError as err:
            code = err.code
        except (OSError, ValueError):
            return False
        return code in self._expected()

    def __str__(self) -> str:
        return f"HTTP GET {self.url} -> {self._expected()}"


def port_is_free(bind: str, port: int) -> bool:
    """No one listens there. SO_REUSEADDR as the servers bind: connections an earlier run
    closed linger in TIME_WAIT and must not cost a stand-in its stable port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError:
            return False
    return True


def free_port(bind_addr: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on bind_addr right now (the kernel picks it).

    There is a small race until the server binds it; servers that accept port 0 and
    report the bound port avoid it.
    """
    family = socket.AF_INET6 if ":" in bind_addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((bind_addr, 0))
        port: int = sock.getsockname()[1]
        return port


# --- /proc helpers (Linux) -------------------------------------------------------------


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses; it ends at the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _proc_start_time(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    return fields[19] if fields else None  # field 22 of stat(5): starttime


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat_fields(int(entry))
        if fields and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _terminate_group(
    pgid: int, grace: float, reap: Callable[[], object] | None = None, kill_wait: float = 5.0
) -> None:
    """SIGTERM the group, wait up to grace for it to empty, then SIGKILL what is left."""
    _signal_group(pgid, signal.SIGTERM)
    for sig_deadline, next_sig in ((grace, signal.SIGKILL), (kill_wait, None)):
        deadline = time.monotonic() + sig_deadline
        delay = 0.01
        while True:
            if reap is not None:
                reap()
            if not _group_members(pgid):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        if next_sig is None:
            raise ServerError(f"process group {pgid} survived SIGKILL for {kill_wait}s")
        _signal_group(pgid, next_sig)


# --- the server handle -------------------------------------------------------------------

_RUNNING: set[LoopbackServer] = set()
_RUNNING_LOCK = threading.Lock()


def _stop_leftovers() -> None:
    with _RUNNING_LOCK:
        leftovers = list(_RUNNING)
    for server in leftovers:
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_leftovers)


class StandinLifecycle:
    """`with Standin(...) as s:` for stand-ins that define start() (and may override stop()).

    The default stop() ends the server start() made (`_server`), or else a detached one an
    earlier process recorded in `pidfile`, where the stand-in has one.
    """

    _server: LoopbackServer | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        server = getattr(self, "_server", None)
        pidfile: Path | None = getattr(self, "pidfile", None)
        if server is not None:
            server.stop()
            self._server = None
        elif pidfile is not None and pidfile.exists():
            stop_pidfile(pidfile)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopbackServer:
    """One real server process: spawn, wait until ready, stop (whole process group).

    Args:
        argv: command line; argv[0] is looked up on PATH like subprocess does.
        log_path: stdout and stderr are appended here; errors quote its tail.
        ready: readiness probe (:class:`TcpReady`, :class:`HttpReady` or any callable);
            None means "ready as soon as spawned".
        name: label for messages (default: basename of argv[0]).
        env: variables set for the child, on top of os.environ when inherit_env.
        cwd: working directory of the child.
        start_timeout: seconds to wait for readiness.
        stop_grace: seconds between SIGTERM and SIGKILL.
        detached: keep running when this Python process exits (needs pidfile).
        pidfile: JSON record for :func:`stop_pidfile`; written for attached servers too
            when given.

    Example::

        port = free_port()
        srv = LoopbackServer(["python3", "-m", "http.server", "-b", "127.0.0.1", str(port)],
                             log_path=tmp / "http.log", ready=TcpReady("127.0.0.1", port))
        with srv:
            ...  # talk to 127.0.0.1:port
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: ReadinessCheck | None = None,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: Path | None = None,
        start_timeout: float = 30.0,
        stop_grace: float = 10.0,
        detached: bool = False,
        pidfile: Path | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        if detached and pidfile is None:
            raise ValueError("a detached server needs a pidfile so it can be stopped later")
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.ready = ready
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.detached = detached
        self.pidfile = pidfile
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._lock = threading.Lock()

    # -- state ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the spawned leader (also its process group id), None before start()."""
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"<LoopbackServer {self.name} pid={self.pid} running={self.running}>"

    def log_tail(self, lines: int = 40) -> str:
        """Last lines the server logged since the latest start()."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                data = fh.read()
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the server and block until it is ready.

        Raises:
            ServerStartError: it exited or was not ready within start_timeout (the
                process group is stopped first; the message carries the log tail).
        """
        with self._lock:
            if self.running:
                raise ServerError(f"{self.name} is already running (pid {self.pid})")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
            with self.log_path.open("ab") as log:
                log.write(f"=== {time.strftime('%F %T')} start {self.name}: {self.argv}\n".encode())
                log.flush()
                self._log_offset = log.tell()
                try:
                    self._proc = subprocess.Popen(
                        self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=self.cwd,
                        start_new_session=True,  # own session => own process group
                    )
                except OSError as err:
                    raise ServerStartError(f"cannot start {self.name}: {err}") from err
            if not self.detached:
                with _RUNNING_LOCK:
                    _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        if self.pidfile is not None:
            self._write_pidfile(self.pidfile)
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {rc} before it was ready "
                    f"({self.ready or 'no check'}); log {self.log_path}:\n{self.log_tail()}"
                )
            if self.ready is None or self.ready():
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{self.name} (pid {self._proc.pid}) was not ready within "
                    f"{self.start_timeout}s ({self.ready}); log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _write_pidfile(self, path: Path) -> None:
        assert self._proc is not None
        pid = self._proc.pid
        record: dict[str, Any] = {
            "name": self.name,
            "pid": pid,
            "pgid": pid,
            "start_time": _proc_start_time(pid),
            "argv": self.argv,
            # What /proc shows once ready: servers that rewrite their title still match.
            "cmdline": _proc_cmdline(pid),
            "log": str(self.log_path),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)

    def stop(self) -> int | None:
        """Stop the process group we started; idempotent. Returns the leader's exit code."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            try:
                if proc.poll() is None or _group_members(proc.pid):
                    _terminate_group(proc.pid, self.stop_grace, reap=proc.poll)
                proc.wait(timeout=5)
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(self)
            if self.pidfile is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.pidfile.unlink()
            return proc.returncode

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_pidfile(path: Path, grace: float = 10.0) -> bool:
    """Stop a (detached) server recorded in a pidfile; True if something was stopped.

    Signals nothing unless the PID still has the recorded start time and command line
    and still leads its process group; a stale pidfile is removed.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        pid = int(record["pid"])
        pgid = int(record["pgid"])
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError) as err:
        raise ServerError(f"unreadable pidfile {path}: {err}") from err
    same_process = (
        _proc_start_time(pid) == record.get("start_time")
        and _proc_cmdline(pid) in (record.get("cmdline"), record.get("argv"))
        and _pgid_of(pid) == pgid
    )
    stopped = False
    if same_process:
        _terminate_group(pgid, grace, reap=lambda: _reap_if_child(pid))
        stopped = True
    path.unlink(missing_ok=True)
    return stopped


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _reap_if_child(pid: int) -> None:
    # When the caller is the parent (same process that started it), collect the zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
