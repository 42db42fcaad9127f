#!/usr/bin/env python3
"""Pull and verify model files on a host, exactly as a lock says. Python 3.10+ stdlib only.

Shipped by the model stage to /usr/local/lib/autoglm/model_fetch.py and run as
``python3 model_fetch.py --plan MODEL_DIR/.autoglm/plan.json [--verify full] [--prune]``.
The plan (JSON, written by the controller) lists every file with size, digest and URL;
the hub token, when one is needed, is read from the 0600 file the plan names, never argv.

Per file: trusted when its stamp (size, mtime, inode, digest) matches; else an existing
file of the right size is re-hashed; else it is downloaded into ``<name>.partial`` with
HTTP Range resume, hashed while it streams (receiving, writing and hashing overlap in three
threads; whole buffers are written with O_DIRECT where the filesystem allows it, so the
page cache is neither filled nor written back later), checked against size and digest,
fsynced and renamed into place. Nothing partial ever sits at a final path, and a file that fails its
check never replaces the one already there. Retries back off exponentially (1 s, doubling,
up to the plan's max_delay) on 429, 5xx, dropped connections and a CDN refusing its signed
URL; a 429 that announces its window (``RateLimit: "resolvers";r=0;t=55``, as the Hub
sends) is waited out instead, up to RATELIMIT_MAX_WAIT, with a line saying so. The tries
start again whenever bytes arrived (huggingface_hub's http_get does the same). The disk
check happens before the first byte is fetched.

Redirects are followed here, not by urllib: Python 3.10 (Ubuntu 22.04) has no 308 handler
(HTTPRedirectHandler.http_error_308 came in 3.11) and mirrors answer 301/308. The token
(a Bearer header; for ModelScope also its ``m_session_id`` cookie) goes only to the
endpoint's own scheme and host: kept on a same-host redirect (a renamed repository),
dropped when the hub sends us to a CDN. ``Accept-Encoding: identity`` is always sent,
as huggingface_hub does, so sizes and digests are of the file's own bytes.

``--check`` reads instead of pulling (the doctor's deep mode): every file of the plan is
re-hashed in parallel and one ``MODEL_CHECK {json}`` line says which match, differ or are
missing. It writes nothing (no stamp, no lock file) and never waits for a pull.

Exit status: 0 done, 1 some file failed (named on stderr), 2 bad plan, 3 not enough disk
(before the first byte, or the disk filled up during the pull: partials are removed), 4
another pull still writes into model_dir (one writer per directory: `.autoglm/fetch.lock`).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import http.client
import json
import mmap
import os
import queue
import re
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

META_DIR = ".autoglm"
PARTIAL = ".partial"
CHUNK = 1 << 20
PIPELINE_DEPTH = 6  # buffers in flight between receiving, writing and hashing, per file
ALIGN = 4096  # O_DIRECT wants offsets, lengths and addresses aligned (4096 covers 512 too)
DIRECT_IO = True  # write whole buffers with O_DIRECT where the filesystem allows it
SYNC_EVERY = 64 << 20
READ_TIMEOUT = 60.0
USER_AGENT = "autoglm-infra-model-fetch/1"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
RATELIMIT_MAX_WAIT = 310.0  # one 5-minute Hub window and a margin (Hub docs: rate limits)


class FetchError(Exception):
    """One file cannot be fetched; the message names it and says why."""


class DiskFull(FetchError):
    """The filesystem of model_dir ran out of space while writing a file."""


class Retryable(Exception):
    """A transient failure (429, 5xx, dropped connection); `retry_after` from the server,
    `rate_limit` the RateLimit description when the wait is the hub's announced window."""

    def __init__(
        self, message: str, retry_after: float | None = None, rate_limit: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limit = rate_limit


class Restart(Exception):
    """The server ignored our Range: start the file from byte 0."""


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    digest: str  # 'sha256:<hex>' or 'gitsha1:<hex>'
    url: str


@dataclass(frozen=True)
class Options:
    model_dir: str
    workers: int
    attempts: int
    max_delay: float
    margin_bytes: int
    token: str | None
    retry_base: float = 1.0
    progress_every: float = 10.0
    auth: str = "bearer"  # 'bearer' (Hugging Face) or 'modelscope' (cookie + bearer)


def log(message: str) -> None:
    print(f"model_fetch: {message}", file=sys.stderr, flush=True)


def new_hasher(entry: Entry) -> Any:
    algo = entry.digest.split(":", 1)[0]
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "gitsha1":
        hasher = hashlib.sha1()  # git's blob id, not a signature
        hasher.update(b"blob %d\0" % entry.size)
        return hasher
    raise FetchError(f"{entry.path}: unknown digest kind {entry.digest!r}")


def digest_of(entry: Entry, hasher: Any) -> str:
    return f"{entry.digest.split(':', 1)[0]}:{hasher.hexdigest()}"


def hash_file(entry: Entry, path: str, limit: int | None = None) -> tuple[Any, int]:
    """(hasher over the first `limit` bytes of `path` (all when None), bytes read)."""
    hasher = new_hasher(entry)
    buf = bytearray(4 * CHUNK)
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as fh:
        while limit is None or done < limit:
            want = len(buf) if limit is None else min(len(buf), limit - done)
            n = fh.readinto(view[:want])
            if not n:
                break
            hasher.update(view[:n])
            done += n
    return hasher, done


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- stamps ----------------------------------------------------------------------------------


class Stamps:
    """`.autoglm/stamps.json`: what was verified, keyed to the file's size, mtime and inode."""

    def __init__(self, model_dir: str, wanted: set[str]) -> None:
        self.path = os.path.join(model_dir, META_DIR, "stamps.json")
        self.lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                loaded = json.load(fh)["files"]
            self.files = {p: s for p, s in loaded.items() if p in wanted}
        except (OSError, ValueError, KeyError, TypeError):
            self.files = {}

    def ok(self, entry: Entry, st: os.stat_result) -> bool:
        s = self.files.get(entry.path)
        return bool(
            s
            and s.get("digest") == entry.digest
            and s.get("size") == entry.size == st.st_size
            and s.get("mtime_ns") == st.st_mtime_ns
            and s.get("inode") == st.st_ino
        )

    def record(self, entry: Entry, final: str) -> None:
        st = os.stat(final)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        with self.lock:
            self.files[entry.path] = {**stamp, "digest": entry.digest}
            self._save()

    def _save(self) -> None:
        tmp = f"{self.path}.tmp"
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": 1, "files": self.files}, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


# -- progress --------------------------------------------------------------------------------


class Progress:
    def __init__(self, entry: Entry, every: float) -> None:
        self.entry = entry
        self.every = every
        self.started = time.monotonic()
        self.last = self.started
        self.transferred = 0

    def update(self, offset: int, added: int) -> None:
        self.transferred += added
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        rate = self.transferred / max(now - self.started, 1e-6) / 2**20
        pct = 100 * offset / self.entry.size if self.entry.size else 100
        log(
            f"{self.entry.path}: {offset / 2**20:.0f}/{self.entry.size / 2**20:.0f} MiB "
            f"({pct:.0f}%) {rate:.0f} MiB/s"
        )


class Flusher:
    """Starts writeback while the download goes on (fdatasync in a thread every SYNC_EVERY
    bytes), so the fsync before the rename only waits for the tail of the file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = 0
        self.thread: threading.Thread | None = None

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= SYNC_EVERY and not (self.thread and self.thread.is_alive()):
            self.pending = 0
            self.thread = threading.Thread(target=os.fdatasync, args=(self.fd,), daemon=True)
            self.thread.start()

    def finish(self) -> None:
        if self.thread is not None:
            self.thread.join()
        os.fsync(self.fd)  # errors of the background syncs surface here too


def open_direct(path: str) -> int | None:
    """A write descriptor on `path` that bypasses the page cache (O_DIRECT), or None where
    the platform or filesystem refuses one (tmpfs, some FUSE and network filesystems)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or not DIRECT_IO:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None


class Sink:
    """Writes received buffers into the partial file, then hashes them, each stage in a
    thread of its own, while the caller receives the next buffer.

    Why: sha256 costs more CPU than recv and write together; hashlib and os.pwrite release
    the GIL, so hashing runs on another core instead of between two recvs. Whole aligned
    buffers go to disk with O_DIRECT: no copy into the page cache and no writeback later,
    so the fsync before the rename has almost nothing left to wait for. A short tail, an
    unaligned resume or a filesystem without O_DIRECT go through the page cache as before.
    Buffers circulate through a small pool of page-aligned mmaps: bounded memory, no copies.
    """

    def __init__(self, partial: str, offset: int, hasher: Any, depth: int = PIPELINE_DEPTH):
        self.offset = offset  # where the next write goes; after close(): the file's size
        self.hasher = hasher
        self.fd = os.open(partial, os.O_WRONLY)
        self.direct_fd = open_direct(partial) if offset % ALIGN == 0 else None
        self.flusher = Flusher(self.fd)
        self.error: OSError | None = None
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self.to_write: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self.to_hash: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        for _ in range(depth):
            self.free.put(mmap.mmap(-1, CHUNK))  # page-aligned, as O_DIRECT needs
        self.threads = [
            threading.Thread(target=self._write_loop, daemon=True),
            threading.Thread(target=self._hash_loop, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def buffer(self) -> mmap.mmap:
        """An empty CHUNK-sized buffer to receive into (waits while all are in flight)."""
        return self.free.get()

    def submit(self, buf: mmap.mmap, n: int) -> None:
        """Write, then hash, buf[:n] next; the buffer returns to the pool afterwards."""
        self.to_write.put((buf, n))

    def recycle(self, buf: mmap.mmap) -> None:
        self.free.put(buf)

    def close(self) -> OSError | None:
        """Wait until every submitted byte is written and hashed, fsync; the write error,
        if any (the hasher then covers more than the file: the caller must not go on)."""
        self.to_write.put(None)
        for thread in self.threads:
            thread.join()
        try:
            self.flusher.finish()
        except OSError as err:
            self.error = self.error or err
        finally:
            self._buffered_from_now()
            os.close(self.fd)
        return self.error

    def _write_loop(self) -> None:
        while (item := self.to_write.get()) is not None:
            buf, n = item
            if self.error is None:
                try:
                    self._write(buf, n)
                except OSError as err:
                    self.error = err
            if self.error is None:
                self.to_hash.put(item)
            else:
                self.free.put(buf)
        self.to_hash.put(None)

    def _write(self, buf: mmap.mmap, n: int) -> None:
        with memoryview(buf) as view:
            pos = 0
            while pos < n:
                if self.direct_fd is not None and (n - pos) % ALIGN == 0:
                    try:
                        done = os.pwrite(self.direct_fd, view[pos:n], self.offset)
                    except OSError as err:
                        if err.errno != errno.EINVAL:
                            raise
                        self._buffered_from_now()  # alignment this filesystem refuses
                        continue
                else:
                    self._buffered_from_now()  # an unaligned length: the rest is buffered
                    done = os.pwrite(self.fd, view[pos:n], self.offset)
                    self.flusher.wrote(done)
                pos += done
                self.offset += done

    def _buffered_from_now(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    def _hash_loop(self) -> None:
        while (item := self.to_hash.get()) is not None:
            buf, n = item
            with memoryview(buf) as view:
                self.hasher.update(view[:n])
            self.free.put(buf)


# -- download --------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """3xx surface as HTTPError; `open_following` follows them (308 included on 3.10)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener() -> urllib.request.OpenerDirector:
    # Environment proxies (the proxy stage's http_proxy/no_proxy) apply, as for curl.
    return urllib.request.build_opener(_NoRedirect)


def same_origin(url: str, origin: str) -> bool:
    """Whether `url` is on the scheme and host (and port) of `origin`: where a token may go.

    huggingface_hub compares the netloc of the redirect target with the request's before
    it keeps Authorization (file_download.py, `_get_metadata_or_catch_error`).
    """
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(origin)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


def auth_headers(token: str | None, auth: str) -> dict[str, str]:
    """What carries the token: a Bearer header; ModelScope's /api/v1 routes read the
    m_session_id cookie (modelscope_hub _legacy_api.py), and its SDK sends both."""
    if not token:
        return {}
    headers = {"Authorization": f"Bearer {token}"}
    if auth == "modelscope":
        headers["Cookie"] = f"m_session_id={token}"
    return headers


def open_following(
    url: str,
    headers: dict[str, str],
    secret: dict[str, str],
    timeout: float = READ_TIMEOUT,
    opener: urllib.request.OpenerDirector | None = None,
) -> Any:
    """GET `url`, following up to MAX_REDIRECTS redirects ourselves; `secret` headers only
    while the URL stays on the first URL's scheme and host. Returns the final response;
    HTTP errors raise urllib.error.HTTPError with `url` set to where they happened."""
    opener = opener or _opener()
    origin = url
    for _ in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, headers={**headers, "Accept-Encoding": "identity"})
        if same_origin(url, origin):
            for name, value in secret.items():
                request.add_unredirected_header(name, value)
        try:
            return opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            location = err.headers.get("Location") if err.headers is not None else None
            if err.code not in REDIRECTS or not location:
                err.url = url
                raise
            err.close()
            url = urllib.parse.urljoin(url, location)
    raise urllib.error.URLError(f"more than {MAX_REDIRECTS} redirects, last to {url}")


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_RATELIMIT = re.compile(r'"(?P<group>[^"]+)"\s*;\s*r\s*=\s*(?P<r>\d+)\s*;\s*t\s*=\s*(?P<t>\d+)')
_POLICY = re.compile(r"q\s*=\s*(?P<q>\d+).*?w\s*=\s*(?P<w>\d+)")


def parse_ratelimit(headers: Any) -> tuple[float, str] | None:
    """(seconds to wait, what to say) when a 429's RateLimit header says the window is spent.

    The Hub's form (huggingface_hub utils/_http.py `parse_ratelimit_headers`, PRs 3570/4662):
    ``RateLimit: "resolvers";r=0;t=55`` and ``RateLimit-Policy: "fixed window";
    "resolvers";q=3000;w=300``. Only r=0 counts (the headers ride on every answer); the
    wait is t + 1 s, as huggingface_hub waits, "to avoid rounding issues".
    """
    match = _RATELIMIT.search((headers.get("RateLimit") or "") if headers is not None else "")
    if match is None or int(match["r"]) != 0:
        return None
    policy = _POLICY.search(headers.get("RateLimit-Policy") or "")
    window = f" of {policy['q']} requests per {policy['w']} s" if policy else ""
    reset = int(match["t"])
    return (
        reset + 1.0,
        f"the hub's '{match['group']}' rate limit{window} is spent, resets in {reset} s",
    )


def hub_refusal(code: int, headers: Any, token_sent: bool, what: str) -> str:
    """A refusal from the hub in its own words (X-Error-Message) plus what to do.

    Codes as hf_raise_for_status reads them (utils/_http.py): GatedRepo, RepoNotFound,
    RevisionNotFound, EntryNotFound; "Invalid credentials in Authorization header" for a
    bad token.
    """
    error_code = headers.get("X-Error-Code") if headers is not None else None
    said = headers.get("X-Error-Message") if headers is not None else None
    quoted = f': "{said}"' if said else ""
    head = f"{what}: HTTP {code}{f' {error_code}' if error_code else ''}{quoted}"
    if error_code == "GatedRepo" and code == 403:
        todo = ("the token's account has not been granted this gated repository: ask for "
                "access on the repository's page with that account, then retry")  # fmt: skip
    elif error_code == "GatedRepo" or (code == 401 and not token_sent):
        todo = ("the repository is gated or private: set a token with read access "
                "(the variable named by hub_token_env, or hub_token_file)")  # fmt: skip
        if not token_sent:
            todo += ("; a token is only sent to huggingface.co or, with hub_token_to_mirror:"
                     " true, to hub_endpoint")  # fmt: skip
    elif code == 401:
        todo = ("the token was refused (invalid, expired or revoked): create a new one "
                "and set it through hub_token_env or hub_token_file")  # fmt: skip
    elif error_code == "RevisionNotFound":
        todo = "check model_revision"
    elif error_code in ("RepoNotFound", "EntryNotFound") or code == 404:
        todo = ("check model_repo (a private repository also needs a token with read "
                "access), or re-resolve the lock (model_lock_update: true)")  # fmt: skip
    else:
        todo = "the token lacks access to this repository, or the hub refuses this host"
    return f"{head}; {todo}"


def stream_into(entry: Entry, partial: str, hasher: Any, offset: int, opts: Options,
                progress: Progress) -> int:  # fmt: skip
    """Fetch bytes [offset, size) appended to `partial`; returns the new offset.

    Raises Retryable (transient), Restart (Range ignored) or FetchError (fatal).
    """
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    secret = auth_headers(opts.token, opts.auth)
    try:
        response = open_following(entry.url, headers, secret)
    except urllib.error.HTTPError as err:
        code, where = err.code, err.url or entry.url
        err.close()
        if code == 429:
            limited = parse_ratelimit(err.headers)
            if limited is not None:
                raise Retryable("HTTP 429", limited[0], limited[1]) from None
            raise Retryable("HTTP 429", _retry_after(err.headers)) from None
        if code >= 500:
            raise Retryable(f"HTTP {code}", _retry_after(err.headers)) from None
        if code == 416:
            raise Restart from None
        if not same_origin(where, entry.url) and code in (401, 403):
            # a signed CDN URL expired or was refused: the hub signs a fresh one next try
            host = urllib.parse.urlsplit(where).netloc
            raise Retryable(f"HTTP {code} from the CDN {host} (signed URL refused)") from None
        raise FetchError(
            hub_refusal(
                code,
                err.headers,
                bool(secret) and same_origin(where, entry.url),
                f"{entry.path}: the hub refused {where}",
            )
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise Retryable(f"connection failed: {err}") from None
    encoding = (response.headers.get("Content-Encoding") or "identity").lower()
    if encoding != "identity":
        response.close()
        raise FetchError(
            f"{entry.path}: the server sent {encoding}-encoded bytes although identity was "
            "asked for (a compressing proxy?); exempt the hub from it (no_proxy) or fix it"
        )
    with response:
        status = response.status
        if offset and status == 200:
            raise Restart
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise Restart
        elif status != 200:
            raise FetchError(f"{entry.path}: unexpected HTTP {status} for {entry.url}")
        length = response.headers.get("Content-Length")
        expected_end = offset + int(length) if length is not None else entry.size
        if expected_end != entry.size:
            raise FetchError(
                f"wrong size from the hub for {entry.path}: it announced "
                f"{expected_end} bytes, the lock says {entry.size}"
            )
        sink = Sink(partial, offset, hasher)
        dropped: BaseException | None = None
        try:
            while sink.error is None:
                buf = sink.buffer()
                n = response.readinto(buf)
                if not n:
                    sink.recycle(buf)
                    break
                if offset + n > entry.size:
                    sink.recycle(buf)
                    raise FetchError(
                        f"wrong size from the hub for {entry.path}: more than {entry.size} bytes"
                    )
                sink.submit(buf, n)  # written and hashed while the next chunk arrives
                offset += n
                progress.update(offset, n)
        except (OSError, http.client.HTTPException) as err:
            dropped = err
        finally:
            write_error = sink.close()  # the hasher covers exactly the file again
    if write_error is not None and write_error.errno == errno.ENOSPC:
        os.unlink(partial)  # frees what this file took; the files in place are untouched
        raise DiskFull(
            f"no space left on device at {opts.model_dir} while writing {entry.path} "
            f"({entry.size / 2**20:.1f} MiB); its partial download was removed"
        )
    if write_error is not None:
        raise FetchError(
            f"{entry.path}: cannot write {partial}: {write_error}; the next run resumes "
            f"from byte {sink.offset}"
        )
    if dropped is not None:
        raise _Interrupted(offset, f"connection dropped at byte {offset}: {dropped}")
    if offset < entry.size:
        raise _Interrupted(offset, f"connection closed at byte {offset} of {entry.size}")
    return offset


class _Interrupted(Retryable):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


def fetch(entry: Entry, opts: Options, stamps: Stamps) -> int:
    """Download one file into place; returns the bytes transferred."""
    final = os.path.join(opts.model_dir, entry.path)
    partial = final + PARTIAL
    os.makedirs(os.path.dirname(final), exist_ok=True)
    progress = Progress(entry, opts.progress_every)
    resumed = False
    try:
        have = os.path.getsize(partial)
    except FileNotFoundError:
        have = 0
    if have > entry.size:
        os.unlink(partial)
        have = 0
    if have:
        hasher, offset = hash_file(entry, partial, have)
        resumed = True
        log(f"{entry.path}: resuming at byte {offset} of {entry.size}")
    else:
        hasher, offset = new_hasher(entry), 0
        open(partial, "wb").close()
    tries, delay = 0, opts.retry_base
    while offset < entry.size:
        before = offset
        try:
            offset = stream_into(entry, partial, hasher, offset, opts, progress)
        except Restart:
            os.truncate(partial, 0)
            hasher, offset, resumed = new_hasher(entry), 0, False
        except Retryable as err:
            if isinstance(err, _Interrupted):
                offset = err.offset
            if offset > before:  # bytes arrived: the link works, a new run of tries
                tries, delay = 0, opts.retry_base
            tries += 1
            if tries >= opts.attempts:
                raise FetchError(
                    f"{entry.path}: gave up after {tries} tries (model_download_attempts): "
                    f"{err}; the next run resumes from byte {offset}"
                ) from None
            retry = f"retry {tries}/{opts.attempts - 1}"
            if err.rate_limit is not None and err.retry_after is not None:
                wait = min(err.retry_after, max(opts.max_delay, RATELIMIT_MAX_WAIT))
                log(f"{entry.path}: {err}: {err.rate_limit}; waiting {wait:.0f} s ({retry})")
            else:
                wait = min(err.retry_after if err.retry_after is not None else delay,
                           opts.max_delay)  # fmt: skip
                log(f"{entry.path}: {err}; {retry} in {wait:.1f} s")
                delay = min(delay * 2, opts.max_delay)
            time.sleep(wait)
    got = digest_of(entry, hasher)
    if got != entry.digest:
        os.unlink(partial)
        if resumed:  # the kept partial may have been bad: one clean try from byte 0
            log(f"{entry.path}: resumed file failed its check; downloading it again whole")
            return progress.transferred + fetch(entry, opts, stamps)
        raise FetchError(
            f"wrong bytes from the hub for {entry.path}: expected {entry.digest}, got {got}; "
            "the download was discarded and any previous file left in place"
        )
    os.replace(partial, final)
    fsync_dir(os.path.dirname(final))
    stamps.record(entry, final)
    return progress.transferred


# -- the run ---------------------------------------------------------------------------------


def load_plan(path: str, read_token: bool = True) -> tuple[list[Entry], Options, dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    entries = [Entry(f["path"], int(f["size"]), f["digest"], f["url"]) for f in doc["files"]]
    token = None
    if doc.get("token_file") and read_token:
        with open(doc["token_file"], encoding="utf-8") as fh:
            token = fh.read().strip() or None
    opts = Options(
        model_dir=doc["model_dir"],
        workers=int(doc["workers"]),
        attempts=int(doc["attempts"]),
        max_delay=float(doc["max_delay"]),
        margin_bytes=int(doc["margin_bytes"]),
        token=token,
        auth=str(doc.get("auth", "bearer")),
    )
    return entries, opts, doc


def check_existing(entry: Entry, opts: Options, stamps: Stamps, full: bool) -> str:
    """'stamp' (trusted), 'rehashed' (read and right), or 'fetch'."""
    final = os.path.join(opts.model_dir, entry.path)
    try:
        st = os.stat(final)
    except FileNotFoundError:
        return "fetch"
    if not full and stamps.ok(entry, st):
        return "stamp"
    if st.st_size != entry.size:
        log(f"{entry.path}: size {st.st_size}, lock says {entry.size}: fetching it again")
        return "fetch"
    hasher, _ = hash_file(entry, final)
    if digest_of(entry, hasher) == entry.digest:
        stamps.record(entry, final)
        return "rehashed"
    log(f"{entry.path}: content does not match the lock ({entry.digest}): fetching it again")
    return "fetch"


def missing_bytes(entries: list[Entry], model_dir: str) -> int:
    total = 0
    for entry in entries:
        try:
            have = os.path.getsize(os.path.join(model_dir, entry.path) + PARTIAL)
        except FileNotFoundError:
            have = 0
        total += entry.size - (have if have <= entry.size else 0)
    return total


def extra_files(model_dir: str, entries: list[Entry], keep_partials: set[str]) -> list[str]:
    wanted = {e.path for e in entries} | {p + PARTIAL for p in keep_partials}
    found = []
    for root, dirs, files in os.walk(model_dir):
        rel_root = os.path.relpath(root, model_dir)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d != META_DIR]
        for name in files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel not in wanted:
                found.append(rel)
    return sorted(found)


def dir_lock(model_dir: str, wait_s: float) -> int | None:
    """Hold `.autoglm/fetch.lock` (flock) for this process's life: one writer per model_dir.

    A pull whose controller was lost is killed on the host (converge_lock.tied_command);
    this waits the few seconds until it is gone instead of writing beside it."""
    path = os.path.join(model_dir, META_DIR, "fetch.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
            if time.monotonic() >= deadline:
                log(
                    f"another pull still writes into {model_dir} ({holder}); waited "
                    f"{wait_s:.0f} s; nothing was changed: converge again once it is gone"
                )
                os.close(fd)
                return None
            if not told:
                log(f"waiting for another pull writing into {model_dir} ({holder})")
                told = True
            time.sleep(0.5)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
    return fd


def run(
    plan_file: str,
    verify: str,
    prune: bool,
    retry_base: float,
    progress_every: float,
    lock_wait: float = 120.0,
) -> int:
    try:
        entries, opts, _ = load_plan(plan_file)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log(f"cannot read plan {plan_file}: {err}")
        return 2
    opts = Options(**{**opts.__dict__, "retry_base": retry_base, "progress_every": progress_every})
    os.makedirs(os.path.join(opts.model_dir, META_DIR), exist_ok=True)
    lock_fd = dir_lock(opts.model_dir, lock_wait)
    if lock_fd is None:
        return 4
    try:
        return pull_locked(entries, opts, verify, prune)
    finally:
        os.close(lock_fd)  # also lets a later run in this process take it


def pull_locked(entries: list[Entry], opts: Options, verify: str, prune: bool) -> int:
    """The pull itself, with model_dir's lock held (see `run`)."""
    stamps = Stamps(opts.model_dir, {e.path for e in entries})
    started = time.monotonic()

    # 1. what is already right (stamps, or re-hashed in parallel: hashlib releases the GIL)
    hash_workers = max(1, min(len(entries), os.cpu_count() or 1))
    with ThreadPoolExecutor(hash_workers) as pool:
        verdicts = list(
            pool.map(lambda e: check_existing(e, opts, stamps, verify == "full"), entries)
        )
    to_fetch = [e for e, v in zip(entries, verdicts, strict=True) if v == "fetch"]

    # 2. disk check before the first byte
    needed = missing_bytes(to_fetch, opts.model_dir)
    free = shutil.disk_usage(opts.model_dir).free
    if to_fetch and needed + opts.margin_bytes > free:
        gib = 1024**3
        log(
            f"not enough disk at {opts.model_dir}: {needed / gib:.2f} GiB to download + "
            f"{opts.margin_bytes / gib:.2f} GiB margin > {free / gib:.2f} GiB free; nothing "
            "was downloaded"
        )
        return 3

    # 3. downloads, several at once
    errors: list[str] = []
    full: set[str] = set()  # files that hit a full disk
    transferred = 0
    if to_fetch:
        log(f"fetching {len(to_fetch)} files, {needed / 2**20:.1f} MiB, {opts.workers} at once")

        def one(entry: Entry) -> int:
            try:
                return fetch(entry, opts, stamps)
            except DiskFull as err:
                full.add(entry.path)
                errors.append(str(err))
            except FetchError as err:
                errors.append(str(err))
            except OSError as err:
                errors.append(f"{entry.path}: {err}")
            return 0

        with ThreadPoolExecutor(opts.workers) as pool:
            transferred = sum(pool.map(one, to_fetch))

    # 4. files that are not in the lock
    failed = {e.path for e in to_fetch if not os.path.exists(os.path.join(opts.model_dir, e.path))}
    extras = extra_files(opts.model_dir, entries, failed)
    for rel in extras:
        if prune:
            os.unlink(os.path.join(opts.model_dir, rel))
            log(f"removed {rel} (not in the lock)")
        else:
            log(f"not in the lock: {rel} (model_prune: true removes it)")

    counts = {v: verdicts.count(v) for v in ("stamp", "rehashed")}
    print(
        f"model_fetch: {len(entries) - len(errors)}/{len(entries)} files ok: "
        f"{counts['stamp']} by stamp, {counts['rehashed']} re-hashed, "
        f"{len(to_fetch) - len(errors)} downloaded ({transferred} bytes) in "
        f"{time.monotonic() - started:.2f} s; {len(extras)} not in the lock"
        + (" (removed)" if prune and extras else ""),
        flush=True,
    )
    for error in errors:
        log(f"ERROR {error}")
    if full:
        left = missing_bytes([e for e in to_fetch if e.path in full], opts.model_dir)
        free = shutil.disk_usage(opts.model_dir).free
        log(
            f"ERROR no space left on device at {opts.model_dir}: the pull still needs "
            f"{left / 2**20:.1f} MiB (+ {opts.margin_bytes / 2**20:.1f} MiB margin, "
            f"model_disk_margin_mib), {free / 2**20:.1f} MiB are free; partial downloads "
            "were removed and the files already in place kept. Free space there (or point "
            "model_dir at a larger disk) and converge again"
        )
        return 3
    return 1 if errors else 0


def check_contents(plan_file: str) -> int:
    """Re-hash every file of the plan, in parallel, changing nothing; one MODEL_CHECK line."""
    try:
        entries, opts, _ = load_plan(plan_file, read_token=False)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log(f"cannot read plan {plan_file}: {err}")
        return 2
    started = time.monotonic()

    def verdict(entry: Entry) -> tuple[str, str]:
        final = os.path.join(opts.model_dir, entry.path)
        try:
            if os.stat(final).st_size != entry.size:
                return "wrong_size", entry.path
            hasher, _ = hash_file(entry, final)
        except FileNotFoundError:
            return "missing", entry.path
        except OSError as err:
            return "unreadable", f"{entry.path} ({err.strerror})"
        except FetchError as err:  # a digest kind this helper does not know
            return "unreadable", str(err)
        return ("ok" if digest_of(entry, hasher) == entry.digest else "changed"), entry.path

    with ThreadPoolExecutor(max(1, min(len(entries), os.cpu_count() or 1))) as pool:
        verdicts = list(pool.map(verdict, entries))
    result: dict[str, Any] = {
        k: [] for k in ("ok", "changed", "wrong_size", "missing", "unreadable")
    }
    for kind, what in verdicts:
        result[kind].append(what)
    result["bytes"] = sum(
        e.size for e, (kind, _) in zip(entries, verdicts, strict=True) if kind in ("ok", "changed")
    )
    result["seconds"] = round(time.monotonic() - started, 2)
    print("MODEL_CHECK " + json.dumps(result, sort_keys=True), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--plan", required=True, help="plan JSON written by the model stage")
    parser.add_argument("--verify", choices=("stamp", "full"), default="stamp")
    parser.add_argument("--prune", action="store_true", help="remove files not in the plan")
    parser.add_argument(
        "--check", action="store_true", help="re-hash every file, change nothing, report"
    )
    parser.add_argument("--retry-base", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--progress-every", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        return check_contents(args.plan)
    socket.setdefaulttimeout(READ_TIMEOUT)
    return run(args.plan, args.verify, args.prune, args.retry_base, args.progress_every)


if __name__ == "__main__":
    sys.exit(main())
