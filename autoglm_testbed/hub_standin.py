"""A model-hub stand-in on loopback: Hugging Face API + resolve endpoints, and ModelScope's.

Serves any directory as a repository revision (`publish`), with what clients rely on:

* ``GET /api/models/{repo}/revision/{rev}?blobs=true``: ``sha`` (the commit) and
  ``siblings[]`` with ``rfilename``, ``size``, ``blobId`` and, for LFS files,
  ``lfs: {sha256, size, pointerSize}``; ``/tree/{rev}`` lists the same with ``lfs.oid``;
* ``GET /{repo}/resolve/{rev}/{path}``: small files directly; LFS files answer 302 to a
  CDN-like URL (``/_lfs/...``) with ``X-Repo-Commit``, ``X-Linked-Etag`` and
  ``X-Linked-Size``, as huggingface.co does; bodies support Range, ETag, If-Range;
* ModelScope: ``GET /api/v1/models/{repo}/repo/files?Revision=..`` (``Data.Files[]`` with
  ``Path``, ``Size``, ``Sha256``) and ``GET /api/v1/models/{repo}/repo?Revision=..&FilePath=..``.

Switchable faults per file (``set_faults`` in-process, or ``POST /_standin/faults``):
drop the connection after N bytes, answer 429/503 (with Retry-After), serve wrong bytes;
plus a bandwidth limit. An optional token makes the API and resolve endpoints answer 401
without ``Authorization: Bearer <token>``; the CDN hop records whether one was sent.

Run: ``python -m autoglm_testbed.hub_standin --workdir DIR --publish owner/name=SRC
[--bind 127.0.0.1] [--port N] [--port-file F] [--access-log F]``. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from autoglm_testbed.servers import HttpReady, LoopbackServer, stop_pidfile
from autoglm_testbed.static_http import (
    StaticFileHandler,
    StaticHTTPServer,
    serve_in_thread,
    serve_until_signalled,
)

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack")
LFS_MIN_SIZE = 10 * 2**20


@dataclass
class Fault:
    """`kind`: 'drop' (close after `after_bytes`), 'status' (answer `status`), 'corrupt'.

    `path` is the file's path in the repo ('*' for every file); `times` how many
    responses it hits (-1: all). `hits` counts the responses it changed.
    """

    kind: str
    path: str = "*"
    times: int = 1
    status: int = 503
    retry_after: float | None = None
    after_bytes: int = 0
    hits: int = 0


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str
    git_oid: str
    lfs: bool


@dataclass
class HubState:
    """Repositories, refs and faults; shared by the handler threads."""

    workdir: Path
    token: str | None = None
    rate_bps: int | None = None  # bandwidth limit per response, bytes per second
    faults: list[Fault] = field(default_factory=list)
    cdn_auth_seen: list[str] = field(default_factory=list)  # CDN paths that got a token
    lock: threading.Lock = field(default_factory=threading.Lock)

    def repo_dir(self, repo: str) -> Path:
        return self.workdir / "repos" / repo

    def resolve(self, repo: str, revision: str) -> str | None:
        """A branch/tag name or a full commit to a commit this hub holds."""
        try:
            refs = json.loads((self.repo_dir(repo) / "refs.json").read_text())
        except (OSError, ValueError):
            return None
        commit = refs.get(revision, revision)
        return commit if (self.repo_dir(repo) / "commits" / commit).is_dir() else None

    def manifest(self, repo: str, commit: str) -> list[HubFile]:
        raw = json.loads((self.repo_dir(repo) / "commits" / f"{commit}.json").read_text())
        return [HubFile(**item) for item in raw]

    def take_fault(self, path: str, kinds: Sequence[str]) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.kind in kinds and fault.path in ("*", path) and fault.times != 0:
                    fault.times -= 1 if fault.times > 0 else 0
                    fault.hits += 1
                    return fault
        return None


def git_blob_id(path: Path) -> str:
    hasher = hashlib.sha1()
    hasher.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            hasher.update(chunk)
    return hasher.hexdigest()


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            hasher.update(chunk)
    return hasher.hexdigest()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish(state: HubState, repo: str, source: Path, branch: str = "main") -> str:
    """Make `source` (a directory) the content of `branch`; returns its commit id."""
    files = []
    for path in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        rel = path.relative_to(source).as_posix()
        size = path.stat().st_size
        lfs = rel.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
        files.append(HubFile(rel, size, sha256_of(path), git_blob_id(path), lfs))
    manifest = json.dumps([asdict(f) for f in files], sort_keys=True)
    commit = hashlib.sha1(f"{repo}\n{manifest}".encode()).hexdigest()
    commits = state.repo_dir(repo) / "commits"
    target = commits / commit
    if not target.is_dir():
        tmp = commits / f".{commit}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, copy_function=_link_or_copy)
        tmp.rename(target)
        (commits / f"{commit}.json").write_text(manifest)
    refs_file = state.repo_dir(repo) / "refs.json"
    refs = json.loads(refs_file.read_text()) if refs_file.exists() else {}
    refs[branch] = commit
    refs_file.write_text(json.dumps(refs))
    return commit


def make_test_repo(
    target: Path, shards: int = 3, shard_size: int = 3 * 2**20, seed: int = 1
) -> Path:
    """Bytes shaped like a model repo: safetensors-named shards plus small json files.

    Not loadable by transformers (the tiny real model lives in testbed/tiny_model.py);
    the pull only needs bytes. Deterministic for a given seed.
    """
    import random

    rng = random.Random(seed)
    target.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        (target / name).write_bytes(rng.randbytes(shard_size))
        weight_map[f"layer.{i}.weight"] = name
    index = {"metadata": {"total_size": shards * shard_size}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (target / "config.json").write_text(json.dumps({"model_type": "standin", "seed": seed}))
    (target / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return target


class HubHandler(StaticFileHandler):
    server: HubServer
    _target: Path | None = None
    _repo_path: str = ""
    _commit: str = ""

    @property
    def hub(self) -> HubState:
        return self.server.hub

    def _authorized(self) -> bool:
        return (
            self.hub.token is None
            or self.headers.get("Authorization") == f"Bearer {self.hub.token}"
        )

    def before_file(self) -> bool:
        self._target = None
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            return self._hf_api(f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:]))
        if (
            parts[:3] == ["api", "v1", "models"]
            and len(parts) == 7
            and parts[5:]
            == [
                "repo",
                "files",
            ]
        ):
            return self._ms_files(f"{parts[3]}/{parts[4]}", query.get("Revision", "master"))
        if parts[:3] == ["api", "v1", "models"] and len(parts) == 6 and parts[5] == "repo":
            repo = f"{parts[3]}/{parts[4]}"
            return self._file(repo, query.get("Revision", "master"), query.get("FilePath", ""))
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if parts[:1] == ["_lfs"] and len(parts) >= 5:
            if self.headers.get("Authorization"):
                with self.hub.lock:
                    self.hub.cdn_auth_seen.append(path)
            return self._file(f"{parts[1]}/{parts[2]}", parts[3], "/".join(parts[4:]), cdn=True)
        self.send_json(404, {"error": "Not found"})
        return True

    # -- API -------------------------------------------------------------------------------

    def _hf_api(self, repo: str, kind: str, revision: str) -> bool:
        if not self._authorized():
            self.send_json(401, {"error": "Invalid credentials in Authorization header"})
            return True
        commit = self.hub.resolve(repo, revision)
        if commit is None or kind not in ("revision", "tree"):
            self.send_json(404, {"error": f"Revision Not Found for {repo}@{revision}"})
            return True
        files = self.hub.manifest(repo, commit)
        if kind == "tree":
            tree = []
            for f in files:
                entry: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size}
                entry["oid"] = f.git_oid
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                tree.append(entry)
            self.send_json(200, tree)
            return True
        siblings = []
        for f in files:
            item: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.git_oid}
            if f.lfs:
                item["size"] = f.size
                item["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(item)
        self.send_json(200, {"id": repo, "sha": commit, "siblings": siblings, "private": False})
        return True

    def _ms_files(self, repo: str, revision: str) -> bool:
        commit = self.hub.resolve(repo, revision)
        if commit is None:
            self.send_json(200, {"Code": 10010205001, "Message": "revision not found"})
            return True
        listed = [
            {"Name": f.path.rsplit("/", 1)[-1], "Path": f.path, "Size": f.size,
             "Sha256": f.sha256, "Type": "blob", "Revision": commit}
            for f in self.hub.manifest(repo, commit)
        ]  # fmt: skip
        self.send_json(200, {"Code": 200, "Data": {"Files": listed}, "Success": True})
        return True

    # -- files -----------------------------------------------------------------------------

    def _resolve(self, repo: str, revision: str, file_path: str) -> bool:
        if not self._authorized():
            self.send_json(401, {"error": "Invalid credentials in Authorization header"})
            return True
        commit = self.hub.resolve(repo, revision)
        entry = None
        if commit is not None:
            entry = next((f for f in self.hub.manifest(repo, commit) if f.path == file_path), None)
        if commit is None or entry is None:
            self.send_body(404, b"Entry not found\n", headers={"X-Error-Code": "EntryNotFound"})
            return True
        if entry.lfs:
            host = self.headers.get("Host", f"{self.server.host}:{self.server.port}")
            location = f"http://{host}/_lfs/{repo}/{commit}/{urllib.parse.quote(file_path)}"
            self.send_body(
                302,
                b"",
                headers={
                    "Location": location,
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.size),
                },
            )
            return True
        return self._file(repo, commit, file_path)

    def _file(self, repo: str, revision: str, file_path: str, cdn: bool = False) -> bool:
        commit = self.hub.resolve(repo, revision)
        root = self.hub.repo_dir(repo) / "commits"
        candidate = (root / str(commit) / file_path) if commit else None
        if (
            candidate is None
            or ".." in file_path.split("/")
            or not candidate.is_file()
            or not candidate.resolve().is_relative_to(root.resolve())
        ):
            self.send_body(404, b"Entry not found\n")
            return True
        self._repo_path = file_path
        fault = self.hub.take_fault(file_path, ("status",))
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            self.send_body(
                fault.status, f"{fault.status} (stand-in fault)\n".encode(), headers=headers
            )
            return True
        self._target = candidate
        self._commit = str(commit)
        return False  # the base class serves it, with Range and ETag

    def resolve_file(self, url_path: str) -> Path | None:
        return self._target

    def extra_headers(self, file: Path, st: os.stat_result) -> Mapping[str, str]:
        return {"X-Repo-Commit": self._commit}

    def plain_body(self) -> bool:
        # sendfile unless a drop/corrupt fault would hit this response or a rate is set
        with self.hub.lock:
            return not self.hub.rate_bps and not any(
                f.kind in ("drop", "corrupt") and f.path in ("*", self._repo_path) and f.times
                for f in self.hub.faults
            )

    def body_chunks(self, fh: IO[bytes], start: int, length: int) -> Iterator[bytes]:
        drop = self.hub.take_fault(self._repo_path, ("drop",))
        corrupt = self.hub.take_fault(self._repo_path, ("corrupt",))
        rate = self.hub.rate_bps
        sent = 0
        began = time.monotonic()
        for chunk in super().body_chunks(fh, start, length):
            if drop is not None and sent + len(chunk) > drop.after_bytes:
                yield chunk[: max(0, drop.after_bytes - sent)]
                return  # base class closes the connection: the client sees a short body
            if corrupt is not None and sent == 0:
                chunk = bytes(b ^ 0xFF for b in chunk[:64]) + chunk[64:]
            sent += len(chunk)
            yield chunk
            if rate:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)

    # -- control ---------------------------------------------------------------------------

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/_standin/faults":
            self.send_json(404, {"error": "Not found"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        doc = json.loads(self.rfile.read(length) or b"{}")
        with self.hub.lock:
            self.hub.faults = [Fault(**f) for f in doc.get("faults", [])]
            self.hub.rate_bps = doc.get("rate_bps")
        self.send_json(200, {"ok": True})


class HubServer(StaticHTTPServer):
    def __init__(self, hub: HubState, address: tuple[str, int], access_log: Path | None = None):
        self.hub = hub
        hub.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(hub.workdir, address, HubHandler, access_log)

    @property
    def host(self) -> str:
        addr = self.server_address[0]
        return addr if isinstance(addr, str) else bytes(addr).decode()


class HubStandin:
    """In-process hub for tests: `with HubStandin(dir) as hub: hub.publish(...)`."""

    def __init__(
        self,
        workdir: Path,
        bind: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        access_log: Path | None = None,
    ) -> None:
        self.state = HubState(Path(workdir), token=token)
        self.server = HubServer(self.state, (bind, port), access_log)
        self.access_log = access_log
        self._ctx: contextlib.AbstractContextManager[Any] | None = None

    @property
    def url(self) -> str:
        host = self.server.host
        return (
            f"http://[{host}]:{self.server.port}"
            if ":" in host
            else f"http://{host}:{self.server.port}"
        )

    def publish(self, repo: str, source: Path, branch: str = "main") -> str:
        return publish(self.state, repo, source, branch)

    def set_faults(self, *faults: Fault, rate_bps: int | None = None) -> None:
        with self.state.lock:
            self.state.faults = list(faults)
            self.state.rate_bps = rate_bps

    def __enter__(self) -> HubStandin:
        self._ctx = serve_in_thread(self.server)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--publish", action="append", default=[], metavar="OWNER/NAME=DIR")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--access-log", type=Path)
    args = parser.parse_args(argv)
    hub = HubState(args.workdir, token=os.environ.get("HUB_STANDIN_TOKEN") or None)
    for item in args.publish:
        repo, _, src = item.partition("=")
        print(f"{repo}: {publish(hub, repo, Path(src))}", file=sys.stderr, flush=True)
    server = HubServer(hub, (args.bind, args.port), args.access_log)
    banner = f"hub stand-in on http://{args.bind}:{server.port}/"
    serve_until_signalled(server, banner, args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class HubProcess:
    """The hub stand-in as its own process, so the demo can leave it running (pidfile)."""

    def __init__(self, workdir: Path, bind: str, port: int, publish: Mapping[str, Path]) -> None:
        self.workdir = workdir
        self.bind = bind
        self.port = port
        self.published = dict(publish)
        self.pidfile = workdir / "hub.pid"
        self._server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def start(self, detached: bool = False) -> HubProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "autoglm_testbed.hub_standin",
                "--workdir", str(self.workdir / "hub"), "--bind", self.bind,
                "--port", str(self.port),
                "--access-log", str(self.workdir / "access.log")]  # fmt: skip
        for repo, source in self.published.items():
            argv += ["--publish", f"{repo}={source}"]
        repo = next(iter(self.published), "")
        self._server = LoopbackServer(
            argv,
            log_path=self.workdir / "hub.log",
            ready=HttpReady(f"{self.url}/api/models/{repo}/revision/main"),
            name="hub-standin",
            detached=detached,
            pidfile=self.pidfile,
        )
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        elif self.pidfile.exists():
            stop_pidfile(self.pidfile)
