"""Process management for stand-in servers: readiness, errors with log tails, stopping."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoglm_testbed.servers import (
    HttpReady,
    LoopbackServer,
    ServerStartError,
    TcpReady,
    free_port,
    stop_pidfile,
)
from autoglm_testbed.waiting import wait_until as wait_for_state

PY = sys.executable


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and fields[2] == str(pgid):
                members.append(int(entry.name))
    return members


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def listening(port: int) -> bool:
    return TcpReady("127.0.0.1", port)()


def delayed_listener(port: int, delay: float = 0.5) -> list[str]:
    """A server that only starts listening after `delay` seconds."""
    code = textwrap.dedent(
        f"""
        import socket, time
        print("warming up", flush=True)
        time.sleep({delay})
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen()
        print("listening", flush=True)
        while True:
            s.accept()[0].close()
        """
    )
    return [PY, "-c", code]


def static_http_argv(root: Path, port: int) -> list[str]:
    return [PY, "-m", "autoglm_testbed.static_http", "--root", str(root), "--port", str(port)]


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port("127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_blocks_until_tcp_ready_and_stop_closes_port(tmp_path: Path) -> None:
    port = free_port()
    srv = LoopbackServer(
        delayed_listener(port), log_path=tmp_path / "s.log", ready=TcpReady("127.0.0.1", port)
    )
    started = time.monotonic()
    srv.start()
    try:
        assert time.monotonic() - started >= 0.4
        assert listening(port)
        assert srv.running and srv.pid is not None
        assert "listening" in srv.log_tail()
    finally:
        srv.stop()
    assert not srv.running
    assert srv.returncode is not None
    assert not listening(port)


def test_http_ready_checks_the_expected_status(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("ok")
    port = free_port()
    ready = HttpReady(f"http://127.0.0.1:{port}/ok.txt", status=200)
    with LoopbackServer(static_http_argv(tmp_path, port), log_path=tmp_path / "h.log", ready=ready):
        assert HttpReady(f"http://127.0.0.1:{port}/nope", status=404)()
        assert not HttpReady(f"http://127.0.0.1:{port}/nope", status=200)()
    assert not ready()


def test_early_exit_raises_with_exit_code_and_log_tail(tmp_path: Path) -> None:
    argv = [PY, "-c", "import sys; print('boom: bad config key x', flush=True); sys.exit(3)"]
    srv = LoopbackServer(argv, log_path=tmp_path / "e.log", ready=TcpReady("127.0.0.1", 9))
    with pytest.raises(ServerStartError) as err:
        srv.start()
    assert "code 3" in str(err.value)
    assert "boom: bad config key x" in str(err.value)
    assert not srv.running


def test_readiness_timeout_raises_and_stops_the_group(tmp_path: Path) -> None:
    argv = ["sh", "-c", "echo still-waiting; sleep 300 & wait"]
    srv = LoopbackServer(
        argv,
        log_path=tmp_path / "t.log",
        ready=TcpReady("127.0.0.1", free_port()),
        start_timeout=0.5,
    )
    with pytest.raises(ServerStartError) as err:
        srv.start()
    assert "not ready within 0.5s" in str(err.value)
    assert "still-waiting" in str(err.value)
    assert srv.pid is not None
    assert group_members(srv.pid) == []


def test_stop_terminates_every_process_of_the_group(tmp_path: Path) -> None:
    argv = ["sh", "-c", "sleep 300 & sleep 300 & echo up; wait"]
    srv = LoopbackServer(argv, log_path=tmp_path / "g.log").start()
    assert srv.pid is not None
    assert wait_until(lambda: len(group_members(srv.pid or 0)) == 3)
    children = group_members(srv.pid)
    srv.stop()
    assert group_members(srv.pid) == []
    assert not any(alive(pid) for pid in children)


def test_sigterm_ignoring_server_is_killed_after_grace(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('handler' + '-installed', flush=True); time.sleep(300)"  # argv is logged too
    )
    log = tmp_path / "k.log"
    srv = LoopbackServer([PY, "-c", code], log_path=log, stop_grace=0.5).start()
    wait_for_state(lambda: log.read_text(), lambda text: "handler-installed" in text,
               "the server to ignore SIGTERM", timeout=60, step=0.02)  # fmt: skip
    started = time.monotonic()
    assert srv.stop() == -9
    assert 0.4 <= time.monotonic() - started < 5


def test_stop_is_idempotent_and_context_manager_stops(tmp_path: Path) -> None:
    srv = LoopbackServer(["sleep", "300"], log_path=tmp_path / "i.log")
    assert srv.stop() is None  # never started
    with srv:
        pid = srv.pid
        assert pid is not None and alive(pid)
    assert not alive(pid)
    first = srv.stop()
    assert srv.stop() == first


def test_env_cwd_and_log_tail_of_latest_start(tmp_path: Path) -> None:
    code = "import os; print('env', os.environ['STANDIN_X'], 'cwd', os.getcwd(), flush=True)"
    srv = LoopbackServer(
        [PY, "-c", code + "; import time; time.sleep(300)"],
        log_path=tmp_path / "logs" / "env.log",
        env={"STANDIN_X": "42"},
        cwd=tmp_path,
    )
    for _ in range(2):
        with srv:
            assert wait_until(lambda: "env 42" in srv.log_tail())
    assert f"env 42 cwd {tmp_path}" in srv.log_tail()
    assert srv.log_tail().count("env 42") == 1  # only the latest start
    assert (tmp_path / "logs" / "env.log").read_text().count("env 42") == 2


def test_detached_server_outlives_python_and_stop_pidfile_stops_it(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello")
    port = free_port()
    pidfile = tmp_path / "run" / "http.pid"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from autoglm_testbed.servers import LoopbackServer, TcpReady
        LoopbackServer({static_http_argv(tmp_path, port)!r},
                       log_path=Path({str(tmp_path)!r}) / "d.log",
                       ready=TcpReady("127.0.0.1", {port}), detached=True,
                       pidfile=Path({str(pidfile)!r})).start()
        """
    )
    try:
        subprocess.run([PY, "-c", script], check=True, timeout=60)
        record = json.loads(pidfile.read_text())
        assert alive(record["pid"])
        assert HttpReady(f"http://127.0.0.1:{port}/hello.txt")()
        assert stop_pidfile(pidfile) is True
        assert wait_until(lambda: not alive(record["pid"]))
        assert not listening(port)
        assert not pidfile.exists()
        assert stop_pidfile(pidfile) is False  # idempotent
    finally:
        stop_pidfile(pidfile)


def test_stop_pidfile_refuses_a_process_that_is_not_ours(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    srv = LoopbackServer(["sleep", "300"], log_path=tmp_path / "p.log", pidfile=pidfile).start()
    try:
        assert srv.pid is not None
        record = json.loads(pidfile.read_text())
        record["cmdline"] = record["argv"] = ["something", "else"]
        pidfile.write_text(json.dumps(record))
        assert stop_pidfile(pidfile) is False
        assert alive(srv.pid)
        assert not pidfile.exists()  # stale record removed

        record["cmdline"] = record["argv"] = ["sleep", "300"]
        record["start_time"] = "1"  # same PID and argv but another start: PID reuse
        pidfile.write_text(json.dumps(record))
        assert stop_pidfile(pidfile) is False
        assert alive(srv.pid)
    finally:
        srv.stop()


def test_atexit_stops_attached_servers_left_running(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from autoglm_testbed.servers import LoopbackServer
        srv = LoopbackServer(["sh", "-c", "sleep 300 & wait"],
                             log_path=Path({str(tmp_path)!r}) / "a.log")
        print(srv.start().pid)
        """
    )
    out = subprocess.run([PY, "-c", script], check=True, capture_output=True, text=True, timeout=60)
    pgid = int(out.stdout.strip())
    assert wait_until(lambda: group_members(pgid) == [], timeout=5)


def test_http_ready_does_not_follow_redirects(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    port = free_port()
    code = textwrap.dedent(
        f"""
        import http.server
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(302); self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0"); self.end_headers()
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
        """
    )
    with LoopbackServer(
        [PY, "-c", code], log_path=tmp_path / "r.log", ready=TcpReady("127.0.0.1", port)
    ):
        assert HttpReady(f"http://127.0.0.1:{port}/", status=302)()
        assert not HttpReady(f"http://127.0.0.1:{port}/", status=200)()
