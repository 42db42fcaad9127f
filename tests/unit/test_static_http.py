"""The static HTTP stand-in server: Range, validators, traversal safety, access log, lifecycle."""

from __future__ import annotations

import email.utils
import http.client
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import pytest

from autoglm_testbed.servers import LoopbackServer, TcpReady, free_port
from autoglm_testbed.static_http import (
    ByteRange,
    StaticFileHandler,
    StaticHTTPServer,
    Unsatisfiable,
    make_server,
    parse_range,
    read_access_log,
    serve_in_thread,
    wait_for_access_log,
)

DATA = bytes(range(256)) * 400  # 102400 bytes, every offset distinguishable enough
SIZE = len(DATA)
SECRET = b"outside-the-root-secret"


Response = tuple[int, http.client.HTTPMessage, bytes]


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "data.bin").write_bytes(DATA)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "nested.txt").write_text("nested\n")
    (root / "Packages.gz").write_bytes(b"\x1f\x8b fake gzip")
    (tmp_path / "outside.txt").write_bytes(SECRET)
    (root / "link-out").symlink_to(tmp_path / "outside.txt")
    (root / "link-in").symlink_to(root / "sub" / "nested.txt")
    return root


@pytest.fixture
def server(docroot: Path, tmp_path: Path) -> Iterator[StaticHTTPServer]:
    srv = make_server(docroot, "127.0.0.1", 0, access_log=tmp_path / "access.log")
    with serve_in_thread(srv):
        yield srv


def fetch(
    srv: StaticHTTPServer,
    path: str,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# --- parse_range -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=90-", ByteRange(90, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-1000", ByteRange(0, 99)),
        ("bytes=95-1000", ByteRange(95, 99)),
        ("BYTES = 3-4", ByteRange(3, 4)),
        ("bytes=0-1,5-6", None),  # several ranges: answered with the full body
        ("items=0-1", None),
        ("bytes=5-2", None),
        ("bytes=abc", None),
        ("bytes=-", None),
    ],
)
def test_parse_range_valid_and_ignored(header: str, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


# --- full responses ----------------------------------------------------------------------


def test_get_full_file_has_length_type_and_validators(server: StaticHTTPServer) -> None:
    status, headers, body = fetch(server, "/data.bin")
    assert status == 200
    assert body == DATA
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["ETag"].startswith('"') and not headers["ETag"].startswith('W/"')
    mtime = (Path(server.root) / "data.bin").stat().st_mtime
    assert headers["Last-Modified"] == email.utils.formatdate(mtime, usegmt=True)


def test_head_sends_headers_without_body(server: StaticHTTPServer) -> None:
    status, headers, body = fetch(server, "/data.bin", method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["Content-Length"] == str(SIZE)


def test_gzip_file_is_not_content_encoded(server: StaticHTTPServer) -> None:
    status, headers, body = fetch(server, "/Packages.gz")
    assert status == 200
    assert headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in headers
    assert body.startswith(b"\x1f\x8b")


# --- ranges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, SIZE - 1),
        ("bytes=-500", SIZE - 500, SIZE - 1),
        ("bytes=100000-999999999", 100000, SIZE - 1),
        ("bytes=-999999999", 0, SIZE - 1),
    ],
)
def test_range_returns_206_with_content_range(
    server: StaticHTTPServer, range_header: str, start: int, end: int
) -> None:
    status, headers, body = fetch(server, "/data.bin", {"Range": range_header})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert headers["Content-Length"] == str(end - start + 1)
    assert body == DATA[start : end + 1]


@pytest.mark.parametrize(
    ("path", "range_header", "size"),
    [
        ("/data.bin", f"bytes={SIZE}-", SIZE),
        ("/data.bin", "bytes=-0", SIZE),
        ("/empty", "bytes=0-", 0),
    ],
)
def test_unsatisfiable_range_returns_416(
    server: StaticHTTPServer, path: str, range_header: str, size: int
) -> None:
    status, headers, _ = fetch(server, path, {"Range": range_header})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize("range_header", ["bytes=0-1,4-5", "items=0-3", "bytes=9-2"])
def test_multi_or_invalid_range_returns_full_200(
    server: StaticHTTPServer, range_header: str
) -> None:
    status, headers, body = fetch(server, "/data.bin", {"Range": range_header})
    assert status == 200
    assert "Content-Range" not in headers
    assert body == DATA


def test_if_range_with_current_etag_or_date_honours_range(server: StaticHTTPServer) -> None:
    _, headers, _ = fetch(server, "/data.bin", method="HEAD")
    for validator in (headers["ETag"], headers["Last-Modified"]):
        status, _, body = fetch(server, "/data.bin", {"Range": "bytes=0-9", "If-Range": validator})
        assert status == 206
        assert body == DATA[:10]


def test_if_range_with_stale_etag_returns_full_body(server: StaticHTTPServer) -> None:
    status, _, body = fetch(server, "/data.bin", {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert status == 200
    assert body == DATA


# --- conditional requests -------------------------------------------------------------


def test_if_none_match_current_etag_returns_304(server: StaticHTTPServer) -> None:
    _, headers, _ = fetch(server, "/data.bin", method="HEAD")
    etag = headers["ETag"]
    for inm in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        status, resp_headers, body = fetch(server, "/data.bin", {"If-None-Match": inm})
        assert status == 304, inm
        assert body == b""
        assert resp_headers["ETag"] == etag
    status, _, body = fetch(server, "/data.bin", {"If-None-Match": '"other"'})
    assert (status, body) == (200, DATA)


def test_if_modified_since_returns_304_until_file_changes(server: StaticHTTPServer) -> None:
    path = Path(server.root) / "data.bin"
    since = email.utils.formatdate(path.stat().st_mtime + 1, usegmt=True)
    assert fetch(server, "/data.bin", {"If-Modified-Since": since})[0] == 304
    os.utime(path, (time.time() + 100, time.time() + 100))
    assert fetch(server, "/data.bin", {"If-Modified-Since": since})[0] == 200


def test_etag_changes_when_file_changes(server: StaticHTTPServer) -> None:
    path = Path(server.root) / "data.bin"
    before = fetch(server, "/data.bin", method="HEAD")[1]["ETag"]
    path.write_bytes(DATA[:-1] + b"!")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9, path.stat().st_mtime_ns + 10**9))
    after = fetch(server, "/data.bin", method="HEAD")[1]["ETag"]
    assert before != after
    # The old validator no longer selects a range of the new content.
    status, _, _ = fetch(server, "/data.bin", {"Range": "bytes=0-1", "If-Range": before})
    assert status == 200


# --- path safety -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/%2E%2E%2Foutside.txt",
        "/sub/../../outside.txt",
        "/sub/%2e%2e/%2e%2e/outside.txt",
        "//etc/passwd",
        "/link-out",
        "/sub",
        "/",
        "/missing",
        "/data.bin%00.txt",
    ],
)
def test_traversal_symlink_escape_and_directories_are_404(
    server: StaticHTTPServer, path: str
) -> None:
    status, _, body = fetch(server, path)
    assert status == 404
    assert SECRET not in body
    assert b"root:" not in body


def test_symlink_inside_root_and_dot_segments_are_served(server: StaticHTTPServer) -> None:
    assert fetch(server, "/link-in")[2] == b"nested\n"
    assert fetch(server, "/./sub/./nested.txt?x=1")[2] == b"nested\n"  # apt asks for /./x.deb


# --- connection handling and logging ---------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server: StaticHTTPServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/data.bin", headers={"Range": "bytes=0-0"})
        first = conn.getresponse()
        assert first.read() == DATA[:1]
        sock = conn.sock
        conn.request("GET", "/missing")
        assert conn.getresponse().read() == b"not found\n"
        conn.request("HEAD", "/data.bin")
        assert conn.getresponse().read() == b""
        conn.request("GET", "/sub/nested.txt")
        assert conn.getresponse().read() == b"nested\n"
        assert conn.sock is sock
    finally:
        conn.close()


def test_access_log_records_method_path_status_bytes_range(
    server: StaticHTTPServer, tmp_path: Path
) -> None:
    fetch(server, "/data.bin", {"Range": "bytes=10-19"})
    fetch(server, "/data.bin", method="HEAD")
    fetch(server, "/missing")
    fetch(server, "/data.bin", method="POST")
    entries = wait_for_access_log(tmp_path / "access.log", lambda entries: len(entries) >= 4)
    # One handler thread per connection writes its entry after its last byte went out, so
    # under load a later request's entry can come first (CI saw HEAD before the GET).
    summary = sorted((e.method, e.path, e.status, e.bytes, e.range, e.complete) for e in entries)
    assert len(summary) == 4
    assert summary[:3] == [
        ("GET", "/data.bin", 206, 10, "bytes=10-19", True),
        ("GET", "/missing", 404, len(b"not found\n"), None, True),
        ("HEAD", "/data.bin", 200, 0, None, True),
    ]
    assert summary[3][:3] == ("POST", "/data.bin", 501)
    assert all(e.client == "127.0.0.1" for e in entries)


class FaultyHandler(StaticFileHandler):
    """What a hub stand-in does: answer some requests itself, cut others short."""

    def before_file(self) -> bool:
        if self.url_path() == "/busy":
            self.send_json(503, {"error": "busy"}, headers={"Retry-After": "1"})
            return True
        return False

    def body_chunks(self, fh: IO[bytes], start: int, length: int) -> Iterator[bytes]:
        for chunk in super().body_chunks(fh, start, length):
            yield chunk[: length // 2]  # drop the connection half-way through
            return


def test_handler_hooks_allow_injected_answers_and_dropped_bodies(
    docroot: Path, tmp_path: Path
) -> None:
    log = tmp_path / "faulty.log"
    srv = make_server(docroot, "127.0.0.1", 0, access_log=log, handler_class=FaultyHandler)
    with serve_in_thread(srv):
        status, headers, body = fetch(srv, "/busy")
        assert (status, headers["Retry-After"], body) == (503, "1", b'{"error": "busy"}')
        with pytest.raises(http.client.IncompleteRead):
            fetch(srv, "/data.bin")
    entries = wait_for_access_log(log, lambda entries: len(entries) >= 2)
    assert (entries[-1].status, entries[-1].bytes, entries[-1].complete) == (200, SIZE // 2, False)


# --- as a process ----------------------------------------------------------------------


def static_http_process(root: Path, tmp_path: Path, *extra: str) -> tuple[LoopbackServer, int]:
    port = free_port()
    argv = [sys.executable, "-m", "autoglm_testbed.static_http", "--root", str(root)]
    argv += ["--port", str(port), "--access-log", str(tmp_path / "proc-access.log"), *extra]
    srv = LoopbackServer(argv, log_path=tmp_path / "proc.log", ready=TcpReady("127.0.0.1", port))
    return srv, port


def test_process_binds_loopback_by_default_and_exits_cleanly_on_sigterm(
    docroot: Path, tmp_path: Path
) -> None:
    srv, port = static_http_process(docroot, tmp_path, "--port-file", str(tmp_path / "port"))
    with srv:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/sub/nested.txt")
        assert conn.getresponse().read() == b"nested\n"
        conn.close()
        assert (tmp_path / "port").read_text().strip() == str(port)
        assert srv.pid is not None
        os.kill(srv.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while srv.returncode is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.returncode == 0, srv.log_tail()
    log = (tmp_path / "proc.log").read_text()
    assert f"on http://127.0.0.1:{port}/" in log
    assert "stopped" in log
    assert [e.path for e in read_access_log(tmp_path / "proc-access.log")] == ["/sub/nested.txt"]


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_sparse_file_is_streamed_not_loaded(docroot: Path, tmp_path: Path) -> None:
    big = docroot / "big.bin"
    with big.open("wb") as fh:  # sparse: 1 GiB of zeros plus a marker past the end
        fh.truncate(1 << 30)
    huge = docroot / "huge.bin"
    with huge.open("wb") as fh:  # > 4 GiB: offsets beyond 32 bits
        fh.seek((5 << 30) - 4)
        fh.write(b"TAIL")
    srv, port = static_http_process(docroot, tmp_path)
    with srv:
        assert srv.pid is not None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/big.bin")
        resp = conn.getresponse()
        assert resp.headers["Content-Length"] == str(1 << 30)
        total = 0
        while chunk := resp.read(1 << 20):
            total += len(chunk)
        assert total == 1 << 30
        conn.request("GET", "/huge.bin", headers={"Range": "bytes=-4"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {(5 << 30) - 4}-{(5 << 30) - 1}/{5 << 30}"
        assert resp.read() == b"TAIL"
        conn.close()
        assert _vm_hwm_kib(srv.pid) < 150 * 1024  # peak RSS far below the file size


def test_keep_alive_requests_do_not_stall_on_nagle(server: StaticHTTPServer) -> None:
    # Headers and body are separate writes; without TCP_NODELAY each request waits ~40 ms
    # for the client's delayed ACK (20 requests took 0.85 s instead of 0.015 s).
    # The stall is a floor under every request after the first (about 44 ms each with Nagle,
    # under 1 ms without, measured here), so the median shows it even on a loaded machine,
    # where the total would say more about the load than about Nagle.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        took = []
        for _ in range(40):
            started = time.monotonic()
            conn.request("GET", "/sub/nested.txt")
            assert conn.getresponse().read() == b"nested\n"
            took.append(time.monotonic() - started)
        middle = statistics.median(took[1:])  # the first request is never held back
        assert middle < 0.035, f"median request {middle * 1000:.0f} ms"
    finally:
        conn.close()


def test_head_of_missing_file_announces_the_get_length(server: StaticHTTPServer) -> None:
    status, headers, body = fetch(server, "/missing", method="HEAD")
    assert (status, body) == (404, b"")
    assert headers["Content-Length"] == str(len(b"not found\n"))


def test_plain_bodies_go_out_by_sendfile_and_a_hangup_is_logged_incomplete(
    docroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = docroot / "big.bin"
    big.write_bytes(os.urandom(64 << 20))
    log = tmp_path / "access.log"
    sendfile_calls: list[int] = []
    real_sendfile = __import__("socket").socket.sendfile

    def counting_sendfile(
        sock: object, file: IO[bytes], offset: int = 0, count: int | None = None
    ) -> int:
        sendfile_calls.append(count or 0)
        sent: int = real_sendfile(sock, file, offset, count)
        return sent

    monkeypatch.setattr("socket.socket.sendfile", counting_sendfile)
    srv = make_server(docroot, "127.0.0.1", 0, access_log=log)
    with serve_in_thread(srv):
        status, _, body = fetch(srv, "/big.bin", {"Range": "bytes=1000-"})
        assert status == 206 and body == big.read_bytes()[1000:]
        assert sendfile_calls  # the default handler leaves the copying to the kernel
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/big.bin")
        resp = conn.getresponse()
        assert len(resp.read(1 << 20)) == 1 << 20
        conn.sock.close()  # hang up mid-body
        conn.close()
        entries = wait_for_access_log(log, lambda es: len(es) == 2, timeout=30)
    # by request, not by line order (each connection's thread writes its own entry)
    ranged, cut = sorted(entries, key=lambda e: e.range is None)
    assert ranged.range == "bytes=1000-" and cut.range is None
    assert ranged.complete and ranged.bytes == (64 << 20) - 1000
    assert not cut.complete and cut.bytes < 64 << 20
