"""Threaded HTTP/1.1 static file server with Range, ETag and an access log.

Serves apt repositories and (subclassed) a model-hub stand-in on loopback. Why not
``http.server.SimpleHTTPRequestHandler`` as-is: it ignores ``Range`` (no resumable
downloads, which is what the model stage tests), has no ETag / If-None-Match / If-Range,
speaks HTTP/1.0 by default, lists directories, follows symlinks out of its root and logs
only to stderr. Our clients (apt, requests, curl) rely on those headers, and tests need
a machine-readable log proving which requests (and ranges) really happened.

Extending (fault injection, API endpoints): subclass :class:`StaticFileHandler` and
override :meth:`~StaticFileHandler.before_file` (answer a request yourself, e.g. 429),
:meth:`~StaticFileHandler.resolve_file` (map URLs to files) or
:meth:`~StaticFileHandler.body_chunks` (drop the connection mid-file, corrupt bytes).

Run: ``python -m autoglm_testbed.static_http --root DIR --bind 127.0.0.1 --port N
[--access-log FILE] [--port-file FILE]``. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import http.client
import json
import mimetypes
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, ClassVar

__all__ = [
    "AccessLog",
    "AccessLogEntry",
    "ByteRange",
    "StaticFileHandler",
    "StaticHTTPServer",
    "main",
    "make_server",
    "parse_range",
    "read_access_log",
    "serve_in_thread",
    "wait_for_access_log",
]

CHUNK_SIZE = 1 << 20
SENDFILE_SLICE = 16 << 20

# Types mimetypes does not know or reports as an *encoding*: never send Content-Encoding
# for .gz files, clients (apt, requests) would then transparently decompress them.
_EXTRA_TYPES = {
    ".deb": "application/vnd.debian.binary-package",
    ".gz": "application/gzip",
    ".xz": "application/x-xz",
    ".bz2": "application/x-bzip2",
    ".zst": "application/zstd",
    ".gpg": "application/pgp-signature",
    ".asc": "application/pgp-keys",
    ".pub": "application/pgp-keys",
    ".safetensors": "application/octet-stream",
}


@dataclass(frozen=True)
class ByteRange:
    """Inclusive byte range [start, end] of a representation."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(Exception):
    """A syntactically valid Range that selects no byte of the file (answer 416)."""


def parse_range(header: str, size: int) -> ByteRange | None:
    """Parse a single-range ``Range`` header against a file of ``size`` bytes.

    Returns None when the header must be ignored (not ``bytes=``, malformed, or several
    ranges: we answer those with the full body, which RFC 9110 §14.2 allows).

    Raises:
        Unsatisfiable: the range starts beyond the end, or is a zero-length suffix.
    """
    unit, sep, spec = header.partition("=")
    if sep != "=" or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if dash != "-" or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignore the header
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)


@dataclass(frozen=True)
class AccessLogEntry:
    """One served request, as written to the access log (one JSON object per line)."""

    ts: float
    client: str
    method: str
    path: str
    status: int
    bytes: int
    range: str | None
    complete: bool

    @classmethod
    def from_json(cls, line: str) -> AccessLogEntry:
        data = json.loads(line)
        return cls(
            ts=float(data["ts"]),
            client=str(data["client"]),
            method=str(data["method"]),
            path=str(data["path"]),
            status=int(data["status"]),
            bytes=int(data["bytes"]),
            range=None if data.get("range") is None else str(data["range"]),
            complete=bool(data.get("complete", True)),
        )


class AccessLog:
    """Thread-safe, line-flushed JSON-lines access log (tests read it while serving)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, entry: AccessLogEntry) -> None:
        line = json.dumps(entry.__dict__, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._fh.closed:
                self._fh.write(line)
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_access_log(path: Path) -> list[AccessLogEntry]:
    """All entries of an access log file (empty list when it does not exist yet)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [AccessLogEntry.from_json(line) for line in text.splitlines() if line.strip()]


def wait_for_access_log(
    path: Path,
    predicate: Callable[[list[AccessLogEntry]], bool],
    timeout: float = 5.0,
) -> list[AccessLogEntry]:
    """Poll the access log until predicate(entries) holds; return the entries.

    An entry is written just *after* the last byte of its response went out, so a
    client can see the response before the entry exists: tests should wait, not read.

    Raises:
        TimeoutError: the predicate still failed after timeout seconds (entries listed).
    """
    deadline = time.monotonic() + timeout
    while True:
        entries = read_access_log(path)
        if predicate(entries):
            return entries
        if time.monotonic() >= deadline:
            listing = "\n".join(f"  {e.method} {e.path} {e.status} {e.bytes}" for e in entries)
            raise TimeoutError(f"access log {path} never matched; entries:\n{listing}")
        time.sleep(0.02)


class StaticHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to one address, serving files below ``root``."""

    daemon_threads = True
    allow_reuse_address = True
    # Several sandbox hosts may connect at once; the default backlog of 5 drops SYNs.
    request_queue_size = 128

    def __init__(
        self,
        root: Path,
        address: tuple[str, int],
        handler_class: type[StaticFileHandler] | None = None,
        access_log: Path | None = None,
    ) -> None:
        self.root = Path(root).resolve(strict=True)
        self.access_log = AccessLog(access_log) if access_log is not None else None
        self._open_connections = 0
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler_class or StaticFileHandler)

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def open_connections(self) -> int:
        """Connections still being served: their requests are not all in the access log yet."""
        with self._connections_lock:
            return self._open_connections

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._open_connections += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._open_connections -= 1

    def server_close(self) -> None:
        super().server_close()
        if self.access_log is not None:
            self.access_log.close()


class StaticFileHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files below the server root; the hook methods are meant to be overridden."""

    server: StaticHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "autoglm-standin/1"
    # Idle keep-alive connections must not pin a thread forever.
    timeout = 120.0
    # Headers and a small body go out in two writes: without TCP_NODELAY, Nagle plus
    # the client's delayed ACK adds ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    chunk_size: ClassVar[int] = CHUNK_SIZE

    # Per-request bookkeeping for the access log.
    _bytes_sent: int
    _complete: bool

    # -- hooks ----------------------------------------------------------------------------

    def before_file(self) -> bool:
        """Called before the file lookup of every GET/HEAD; return True if you answered.

        Override to add API endpoints or inject failures (use :meth:`send_body`).
        """
        return False

    def resolve_file(self, url_path: str) -> Path | None:
        """Map a decoded URL path to a regular file below the root, or None (404).

        Rejects '..' segments, NUL bytes and symlinks that lead outside the root.
        """
        if "\0" in url_path:
            return None
        parts = [p for p in url_path.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            return None
        candidate = self.server.root.joinpath(*parts)
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not real.is_relative_to(self.server.root) or not real.is_file():
            return None
        return real

    def body_chunks(self, fh: IO[bytes], start: int, length: int) -> Iterator[bytes]:
        """Yield the body bytes [start, start+length) of an open file, streamed.

        Override to drop the connection part-way or to corrupt bytes.
        """
        fh.seek(start)
        remaining = length
        while remaining > 0:
            chunk = fh.read(min(self.chunk_size, remaining))
            if not chunk:
                raise OSError(f"file shrank while serving ({remaining} bytes short)")
            remaining -= len(chunk)
            yield chunk

    def plain_body(self) -> bool:
        """True when the body goes out unmodified, so the kernel may send it (sendfile).

        By default: when :meth:`body_chunks` is not overridden. Override together with
        body_chunks to keep the zero-copy path for requests your hook leaves alone.
        """
        return type(self).body_chunks is StaticFileHandler.body_chunks

    def extra_headers(self, file: Path, st: os.stat_result) -> Mapping[str, str]:
        """Additional headers for a file response (e.g. the hub's X-Repo-Commit)."""
        return {}

    # -- helpers for subclasses -----------------------------------------------------------

    def url_path(self) -> str:
        """Percent-decoded path of the request, without query string or fragment."""
        raw = urllib.parse.urlsplit(self.path).path
        return urllib.parse.unquote(raw, errors="surrogateescape")

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a complete in-memory response (no body for HEAD, 1xx, 204, 304)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        bodiless = status < 200 or status in (204, 304)
        if not bodiless:
            self.send_header("Content-Length", str(len(body)))  # HEAD: what GET would send
        self.end_headers()
        if not bodiless and self.command != "HEAD":
            self._write(body)

    def send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json", headers)

    # -- request handling -----------------------------------------------------------------

    def handle_one_request(self) -> None:
        # Reset per-request state: on keep-alive connections the previous request's
        # attributes would otherwise leak into the log of a request that fails to parse.
        self._bytes_sent = 0
        self._complete = True
        self._status = 0
        self.command = ""
        self.path = "-"
        self.headers = http.client.HTTPMessage()
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self._complete = False
            self.close_connection = True
        finally:
            self._log_access()

    def do_GET(self) -> None:
        if not self.before_file():
            self._serve_file()

    def do_HEAD(self) -> None:
        if not self.before_file():
            self._serve_file()

    def _serve_file(self) -> None:
        file = self.resolve_file(self.url_path())
        if file is None:
            self.send_body(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        with file.open("rb") as fh:
            st = os.fstat(fh.fileno())
            size = st.st_size
            etag = f'"{size:x}-{st.st_mtime_ns:x}"'
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            validators = {"ETag": etag, "Last-Modified": last_modified}
            if self._not_modified(etag, st.st_mtime):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                for key, value in {**validators, **self.extra_headers(file, st)}.items():
                    self.send_header(key, value)
                self.end_headers()
                return

            byte_range: ByteRange | None = None
            range_header = self.headers.get("Range")
            if range_header and self._if_range_allows(etag, last_modified):
                try:
                    byte_range = parse_range(range_header, size)
                except Unsatisfiable:
                    self.send_body(
                        HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                        b"range not satisfiable\n",
                        headers={"Content-Range": f"bytes */{size}", **validators},
                    )
                    return

            start, length = (
                (0, size) if byte_range is None else (byte_range.start, byte_range.length)
            )
            self.send_response(HTTPStatus.OK if byte_range is None else HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Type", self.guess_type(file))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if byte_range is not None:
                self.send_header(
                    "Content-Range", f"bytes {byte_range.start}-{byte_range.end}/{size}"
                )
            for key, value in {**validators, **self.extra_headers(file, st)}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            self._complete = False  # until the last byte is out, whatever interrupts us
            if self.plain_body():
                sent = self._sendfile(fh, start, length)
            else:
                sent = 0
                for chunk in self.body_chunks(fh, start, length):
                    self._write(chunk)
                    sent += len(chunk)
            if sent == length:
                self._complete = True
            else:
                # A hook cut the body short: the connection cannot be reused.
                self.close_connection = True

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
            return "*" in tags or etag in tags
        ims = self.headers.get("If-Modified-Since")
        if ims is not None:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= since
        return False

    def _if_range_allows(self, etag: str, last_modified: str) -> bool:
        if_range = self.headers.get("If-Range")
        if if_range is None:
            return True
        if_range = if_range.strip()
        if if_range.startswith(('"', "W/")):
            return if_range == etag  # strong comparison; weak tags never match
        return if_range == last_modified

    def guess_type(self, file: Path) -> str:
        extra = _EXTRA_TYPES.get(file.suffix.lower())
        if extra:
            return extra
        ctype, encoding = mimetypes.guess_type(file.name)
        if encoding is not None or ctype is None:
            return "application/octet-stream"
        return ctype

    def _sendfile(self, fh: IO[bytes], start: int, length: int) -> int:
        """Send bytes [start, start+length) from the page cache: no copy through Python,
        so a benchmark measures the client, not this server. In slices, so the access log
        knows about how far an interrupted body got."""
        sent = 0
        while sent < length:
            n = self.connection.sendfile(fh, start + sent, min(SENDFILE_SLICE, length - sent))
            if n == 0:
                raise OSError(f"file shrank while serving ({length - sent} bytes short)")
            sent += n
            self._bytes_sent += n
        return sent

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self._bytes_sent += len(data)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = int(code)
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Also used by http.server for 400/414/501; keep the body short and log it.
        status = HTTPStatus(code)
        self.close_connection = self.close_connection or code >= 500 or code == 400
        body = f"{code} {message or status.phrase}\n".encode()
        self.send_body(
            code, body, headers={"Connection": "close"} if self.close_connection else None
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # replaced by the JSON access log

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _log_access(self) -> None:
        log = self.server.access_log
        if log is None or not self._status:
            return
        log.write(
            AccessLogEntry(
                ts=time.time(),
                client=self.client_address[0],
                method=self.command or "-",
                path=self.path,
                status=self._status,
                bytes=self._bytes_sent,
                range=self.headers.get("Range"),
                complete=self._complete,
            )
        )
        self._status = 0


def make_server(
    root: Path,
    bind: str = "127.0.0.1",
    port: int = 0,
    access_log: Path | None = None,
    handler_class: type[StaticFileHandler] | None = None,
) -> StaticHTTPServer:
    """Create (bind, not yet serve) a server; port 0 lets the kernel choose."""
    return StaticHTTPServer(Path(root), (bind, port), handler_class, access_log)


@contextlib.contextmanager
def serve_in_thread(server: StaticHTTPServer) -> Iterator[StaticHTTPServer]:
    """Run ``server.serve_forever`` in a daemon thread for the ``with`` block (for tests)."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, required=True, help="directory to serve")
    parser.add_argument("--bind", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 = kernel chooses")
    parser.add_argument("--access-log", type=Path, help="JSON-lines access log file")
    parser.add_argument("--port-file", type=Path, help="write the bound port here when ready")
    args = parser.parse_args(argv)

    server = make_server(args.root, args.bind, args.port, args.access_log)
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    serve_until_signalled(
        server, f"serving {server.root} on http://{host}:{server.port}/", args.port_file
    )
    print("stopped", file=sys.stderr, flush=True)
    return 0


def serve_until_signalled(
    server: StaticHTTPServer, banner: str, port_file: Path | None = None
) -> None:
    """Serve until SIGTERM/SIGINT (a stand-in's own process), then shut down cleanly.

    shutdown() blocks until serve_forever returns, so serving runs in a thread and the main
    thread stays free to react to signals. `port_file` gets the bound port once serving.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    print(banner, file=sys.stderr, flush=True)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{server.port}\n")
        tmp.replace(port_file)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
