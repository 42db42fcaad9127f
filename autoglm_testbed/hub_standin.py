"""A model-hub stand-in on loopback: Hugging Face API + resolve endpoints, and ModelScope's.

Serves any directory as a repository revision (`publish`), modelled on the clients' own code
(huggingface/huggingface_hub at ee0a4510f4bc: src/huggingface_hub/file_download.py,
utils/_http.py; modelscope/modelscope_hub at 26921de3a1f1: _legacy_api.py, _download.py;
modelscope/modelscope at 1804ac6bf8b6: hub/api.py) and on answers people recorded in
public issues (cited where used). What clients rely on:

* ``GET /api/models/{repo}/revision/{rev}?blobs=true``: ``sha`` (the commit) and
  ``siblings[]`` with ``rfilename``, ``size``, ``blobId`` and, for LFS files,
  ``lfs: {sha256, size, pointerSize}``; ``/tree/{rev}`` lists the same with ``lfs.oid``;
* ``GET /{repo}/resolve/{rev}/{path}``: small files directly (gzip-encoded and chunked for a
  client that accepts gzip, as the Hub does for text files: file_download.py ``http_get``);
  LFS files answer 302 (``cdn_redirect_status``) to a signed URL on a SECOND server, the
  CDN (its own port: another host to a client), with ``X-Repo-Commit``, ``X-Linked-Etag``
  and ``X-Linked-Size``, as huggingface.co sends LFS to cas-bridge.xethub.hf.co;
* a renamed repository answers a same-host relative 307 to its new name (what
  ``_httpx_follow_relative_redirects_with_backoff`` in utils/_http.py exists for, with the
  regression test ``test_download_regular_file_from_private_renamed_repo``);
* refusals carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers and a JSON
  ``{"error": ...}`` body (``hf_raise_for_status`` and ``_format`` read both): a bad token,
  a missing token on a private or gated repository, a token not granted a gated repository;
* 429s announce the window with ``RateLimit: "<group>";r=0;t=<s>`` and ``RateLimit-Policy:
  "fixed window";"<group>";q=<n>;w=300`` only, no Retry-After (``parse_ratelimit_headers``,
  huggingface_hub PRs 3570/3577/4662; Hub docs "Hub Rate limits": 5-minute windows);
* an optional mirror (a third server) that answers resolve requests with a cross-origin
  301/308 to the hub, as hf-mirror.com was seen doing, and otherwise serves like the hub
  (its LFS redirects land on the same CDN);
* ModelScope: ``GET /api/v1/models/{repo}/revisions`` (``Data.RevisionMap.Branches/Tags``
  of ``{Revision, CommitId, CreatedAt}``), ``.../repo/files?Revision=..&Recursive=..``
  (``Data.Files[]`` with the fields of the body recorded in modelscope's
  tests/hub/test_hub_retry.py: ``Path``, ``Size``, ``Sha256`` (left out for files in
  ``ms_without_sha256``: the SDK treats it as optional), ``Revision`` = the file's commit,
  ``Type`` ...) and ``.../repo?Revision=..&FilePath=..`` (LFS files: 302 to the CDN, as
  ``_probe_redirect_url`` expects). These ``/api/v1`` routes authenticate with the
  ``m_session_id`` cookie only (_legacy_api.py: "authenticates via a session cookie") and
  refuse revisions that are not a branch or tag.

Switchable faults per file (``set_faults`` in-process, or ``POST /_standin/faults``):
drop the connection after N bytes, answer a status (429 with RateLimit headers, 503 with
Retry-After), serve wrong bytes, refuse the CDN's signed URL (403, an expired signature);
``path="@api"`` aims a status fault at the API requests instead of a file; plus a
bandwidth limit. Every request is recorded (``state.seen``): which server, whether it
carried a token or cookie, and its Accept-Encoding.

Run: ``python -m autoglm_testbed.hub_standin --workdir DIR --publish owner/name=SRC
[--bind 127.0.0.1] [--port N] [--cdn-port N] [--port-file F] [--access-log F]``.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
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
# Messages the Hub sends in X-Error-Message, as users recorded them in public issues:
BAD_TOKEN = "Invalid credentials in Authorization header"  # utils/_http.py checks this text
NO_TOKEN = "Invalid username or password."  # 01-ai/Yi#226: 401 RepoNotFound, no token
GATED_NO_TOKEN = (  # ToTheBeginning/PuLID#97: 401 GatedRepo
    "Access to model {repo} is restricted. You must have access to it and be authenticated "
    "to access it. Please log in."
)
GATED_NOT_GRANTED = (  # huggingface/dataset-viewer#2083: 403 GatedRepo
    "Access to model {repo} is restricted and you are not in the authorized list. "
    "Visit {url}/{repo} to ask for access."
)


@dataclass
class Fault:
    """`kind`: 'drop' (close after `after_bytes`), 'status' (answer `status`), 'corrupt',
    'cdn403' (the CDN refuses its signed URL, as an expired signature is refused).

    `path` is the file's path in the repo ('*' for every file, '@api' for the API requests);
    `times` how many responses it hits (-1: all). `hits` counts the responses it changed.
    A 429 with `ratelimit_reset` carries only the RateLimit headers (`r=0;t=<reset>`).
    """

    kind: str
    path: str = "*"
    times: int = 1
    status: int = 503
    retry_after: float | None = None
    after_bytes: int = 0
    ratelimit_reset: int | None = None
    hits: int = 0


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str
    git_oid: str
    lfs: bool


@dataclass(frozen=True)
class Seen:
    """One request as a server received it (no secret kept, only whether one came)."""

    role: str  # 'hub', 'cdn' or 'mirror'
    path: str
    token: bool  # an Authorization header
    cookie: bool  # an m_session_id cookie
    accept_encoding: str | None


@dataclass
class HubState:
    """Repositories, refs, accounts and faults; shared by the handler threads of every server."""

    workdir: Path
    token: str | None = None  # when set: every repo is private and this token reads it
    accounts: set[str] = field(default_factory=set)  # further valid tokens (other users)
    gated: dict[str, set[str]] = field(default_factory=dict)  # repo -> tokens granted
    renamed: dict[str, str] = field(default_factory=dict)  # old repo id -> new one
    cdn_redirect_status: int = 302  # huggingface.co answers LFS resolves with 302
    mirror_redirect_status: int | None = None  # the mirror's cross-origin redirect, if any
    ms_without_sha256: set[str] = field(default_factory=set)  # listed without Sha256
    rate_bps: int | None = None  # bandwidth limit per response, bytes per second
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # role -> base URL
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cdn_auth_seen(self) -> list[str]:
        """CDN paths that got a token or a session cookie (a leak: the URL is signed)."""
        with self.lock:
            return [s.path for s in self.seen if s.role == "cdn" and (s.token or s.cookie)]

    def valid_tokens(self) -> set[str]:
        tokens = set(self.accounts) | ({self.token} if self.token else set())
        for granted in self.gated.values():
            tokens |= granted
        return tokens

    def repo_dir(self, repo: str) -> Path:
        return self.workdir / "repos" / repo

    def refs(self, repo: str) -> dict[str, str]:
        try:
            loaded: dict[str, str] = json.loads((self.repo_dir(repo) / "refs.json").read_text())
        except (OSError, ValueError):
            return {}
        return loaded

    def exists(self, repo: str) -> bool:
        return (self.repo_dir(repo) / "refs.json").is_file()

    def resolve(self, repo: str, revision: str) -> str | None:
        """A branch/tag name or a full commit to a commit this hub holds."""
        commit = self.refs(repo).get(revision, revision)
        return commit if (self.repo_dir(repo) / "commits" / commit).is_dir() else None

    def manifest(self, repo: str, commit: str) -> list[HubFile]:
        raw = json.loads((self.repo_dir(repo) / "commits" / f"{commit}.json").read_text())
        return [HubFile(**item) for item in raw]

    def take_fault(self, path: str, kinds: Sequence[str]) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.kind in kinds and fault.path in ("*", path) and fault.times != 0:
                    if fault.path == "*" and path == "@api":
                        continue  # '*' means every file, not the API
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


def same_tree(model: Path, source: Path, meta_dir: str = ".autoglm") -> bool:
    """Whether a pulled model directory holds exactly the published files (its meta aside)."""
    wanted = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    got = {
        p.relative_to(model): p.read_bytes()
        for p in model.rglob("*")
        if p.is_file() and meta_dir not in p.relative_to(model).parts
    }
    return got == wanted


class HubHandler(StaticFileHandler):
    server: HubServer
    _target: Path | None = None
    _repo_path: str = ""
    _commit: str = ""

    @property
    def hub(self) -> HubState:
        return self.server.hub

    # -- who is asking -----------------------------------------------------------------------

    def _bearer(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth.removeprefix("Bearer ").strip() or None if auth.startswith("Bearer ") else None

    def _session_cookie(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "m_session_id":
                return value or None
        return None

    def _record(self, path: str) -> None:
        seen = Seen(
            self.server.role,
            path,
            self.headers.get("Authorization") is not None,
            self._session_cookie() is not None,
            self.headers.get("Accept-Encoding"),
        )
        with self.hub.lock:
            self.hub.seen.append(seen)

    def _hf_error(self, status: int, code: str | None, message: str) -> bool:
        """A refusal as the Hub words it: X-Error-* headers and a JSON error body."""
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self.send_json(status, {"error": message}, headers=headers)
        return True

    def _hf_refused(self, repo: str) -> bool:
        """Answer 401/403/404 the way huggingface.co does, if this request may not read `repo`.

        Order and codes from hf_raise_for_status (utils/_http.py): a bad token is refused
        outright; a gated repo says GatedRepo (401 without a token, 403 when the account
        was not granted); an unknown or private repo says RepoNotFound (401 to anonymous
        requests: huggingface/datasets#4472; 404 to authenticated ones).
        """
        token = self._bearer()
        if token is not None and token not in self.hub.valid_tokens():
            return self._hf_error(401, None, BAD_TOKEN)
        if repo in self.hub.gated and self.hub.exists(repo):
            if token is None:
                return self._hf_error(401, "GatedRepo", GATED_NO_TOKEN.format(repo=repo))
            if token not in self.hub.gated[repo]:
                url = self.hub.urls.get("hub", "")
                return self._hf_error(
                    403, "GatedRepo", GATED_NOT_GRANTED.format(repo=repo, url=url)
                )
            return False
        private = self.hub.token is not None and token != self.hub.token
        if not self.hub.exists(repo) or private:
            if token is None:
                return self._hf_error(401, "RepoNotFound", NO_TOKEN)
            return self._hf_error(404, "RepoNotFound", "Repository not found")
        return False

    def _ms_refused(self, repo: str, revision: str) -> bool:
        """ModelScope's /api/v1 routes: the m_session_id cookie, a known branch or tag.

        Status and body of a refusal are not recorded anywhere we could read; the body has
        the Code/Message envelope every /api/v1 answer has (raise_on_error in hub/errors.py).
        """
        if self.hub.token is not None and self._session_cookie() != self.hub.token:
            self.send_json(
                401,
                {"Code": 10010205002, "Message": "login required (m_session_id)",
                 "Success": False},
            )  # fmt: skip
            return True
        refs = self.hub.refs(repo)
        if not refs:
            self.send_json(404, {"Code": 10010205001, "Message": f"model {repo} not found",
                                 "Success": False})  # fmt: skip
            return True
        if revision not in refs:
            self.send_json(
                404,
                {"Code": 10010205001, "Message": f"revision {revision} not found in {repo}",
                 "Success": False},
            )  # fmt: skip
            return True
        return False

    def _api_fault(self, group: str) -> bool:
        fault = self.hub.take_fault("@api", ("status",))
        return fault is not None and self._send_fault(fault, group)

    def _send_fault(self, fault: Fault, group: str) -> bool:
        headers: dict[str, str] = {}
        if fault.ratelimit_reset is not None:
            # only the RateLimit pair (parse_ratelimit_headers), as the Hub sends on a 429
            headers["RateLimit"] = f'"{group}";r=0;t={fault.ratelimit_reset}'
            headers["RateLimit-Policy"] = f'"fixed window";"{group}";q=3000;w=300'
        elif fault.retry_after:
            headers["Retry-After"] = str(fault.retry_after)
        self.send_body(fault.status, f"{fault.status} (stand-in fault)\n".encode(), headers=headers)
        return True

    # -- routing -----------------------------------------------------------------------------

    def before_file(self) -> bool:
        self._target = None
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [p for p in path.split("/") if p]
        self._record(path)
        role = self.server.role
        if role == "cdn":
            if parts[:1] == ["_lfs"] and len(parts) >= 5:
                return self._cdn(f"{parts[1]}/{parts[2]}", parts[3], "/".join(parts[4:]))
            return self._hf_error(404, None, "Not found")
        if role == "mirror" and self.hub.mirror_redirect_status and "resolve" in parts[2:3]:
            # hf-mirror.com: a cross-origin 301/308 to huggingface.co for some requests
            location = self.hub.urls["hub"] + self.path
            self.send_body(self.hub.mirror_redirect_status, b"", headers={"Location": location})
            return True
        if parts[:3] == ["api", "v1", "models"] and len(parts) >= 6:
            return self._modelscope(f"{parts[3]}/{parts[4]}", parts[5:], query)
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo = f"{parts[2]}/{parts[3]}"
            if self._renamed(repo, 2):
                return True
            return self._hf_api(repo, parts[4], "/".join(parts[5:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = f"{parts[0]}/{parts[1]}"
            if self._renamed(repo, 0):
                return True
            return self._resolve(repo, parts[3], "/".join(parts[4:]))
        return self._hf_error(404, None, "Not found")

    def _renamed(self, repo: str, at: int) -> bool:
        """A moved repository: same-host relative 307 to the same request under its new id."""
        new = self.hub.renamed.get(repo)
        if new is None:
            return False
        url = urllib.parse.urlsplit(self.path)
        segments = url.path.split("/")
        owner, name = new.split("/", 1)
        segments[at + 1 : at + 3] = [owner, name]
        location = "/".join(segments) + (f"?{url.query}" if url.query else "")
        self.send_body(307, b"", headers={"Location": location})
        return True

    # -- Hugging Face API --------------------------------------------------------------------

    def _hf_api(self, repo: str, kind: str, revision: str) -> bool:
        if self._api_fault("api") or self._hf_refused(repo):
            return True
        commit = self.hub.resolve(repo, revision)
        if commit is None or kind not in ("revision", "tree"):
            return self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
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

    # -- ModelScope --------------------------------------------------------------------------

    def _modelscope(self, repo: str, rest: list[str], query: Mapping[str, str]) -> bool:
        if rest == ["revisions"]:
            if self._api_fault("api"):
                return True
            branches = [
                {"Revision": name, "CommitId": commit, "CreatedAt": 1700000000}
                for name, commit in sorted(self.hub.refs(repo).items())
            ]
            revisions = {"RevisionMap": {"Branches": branches, "Tags": []}}
            self.send_json(200, {"Code": 200, "Success": True, "Data": revisions})
            return True
        revision = query.get("Revision", "master")
        if rest == ["repo", "files"]:
            if self._api_fault("api") or self._ms_refused(repo, revision):
                return True
            return self._ms_files(repo, revision)
        if rest == ["repo"]:
            if self._ms_refused(repo, revision):
                return True
            return self._ms_file(repo, revision, query.get("FilePath", ""))
        self.send_json(404, {"Code": 404, "Message": "not found", "Success": False})
        return True

    def _ms_files(self, repo: str, revision: str) -> bool:
        commit = self.hub.resolve(repo, revision) or ""
        listed = []
        for f in self.hub.manifest(repo, commit):
            item: dict[str, Any] = {
                "CommitMessage": "upload", "CommittedDate": 1700000000,
                "CommitterName": "standin", "InCheck": False, "IsLFS": f.lfs,
                "Mode": "33188", "Name": f.path.rsplit("/", 1)[-1], "Path": f.path,
                "Revision": commit, "Sha256": f.sha256, "Size": f.size, "Type": "blob",
            }  # fmt: skip
            if f.path in self.hub.ms_without_sha256:
                del item["Sha256"]
            listed.append(item)
        self.send_json(200, {"Code": 200, "Data": {"Files": listed}, "Message": "success",
                             "Success": True})  # fmt: skip
        return True

    def _ms_file(self, repo: str, revision: str, file_path: str) -> bool:
        commit = self.hub.resolve(repo, revision) or ""
        entry = next((f for f in self.hub.manifest(repo, commit) if f.path == file_path), None)
        if entry is None:
            self.send_json(404, {"Code": 404, "Message": "file not found", "Success": False})
            return True
        if entry.lfs:
            return self._to_cdn(repo, commit, entry, 302)
        return self._file(repo, commit, file_path)

    # -- files -----------------------------------------------------------------------------

    def _resolve(self, repo: str, revision: str, file_path: str) -> bool:
        if self._hf_refused(repo):
            return True
        commit = self.hub.resolve(repo, revision)
        if commit is None:
            return self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        entry = next((f for f in self.hub.manifest(repo, commit) if f.path == file_path), None)
        if entry is None:
            return self._hf_error(404, "EntryNotFound", "Entry not found")
        fault = self.hub.take_fault(file_path, ("status",))
        if fault is not None:
            return self._send_fault(fault, "resolvers")
        if entry.lfs:
            return self._to_cdn(repo, commit, entry, self.hub.cdn_redirect_status)
        accepts = self.headers.get("Accept-Encoding") or ""
        if "gzip" in accepts.lower() and not self.headers.get("Range"):
            return self._send_gzip(repo, commit, file_path)
        return self._file(repo, commit, file_path)

    def _to_cdn(self, repo: str, commit: str, entry: HubFile, status: int) -> bool:
        signed = urllib.parse.urlencode({"Expires": int(time.time()) + 3600, "Signature": "x"})
        location = (
            f"{self.hub.urls['cdn']}/_lfs/{repo}/{commit}/{urllib.parse.quote(entry.path)}?{signed}"
        )
        headers = {
            "Location": location,
            "X-Repo-Commit": commit,
            "X-Linked-Etag": f'"{entry.sha256}"',
            "X-Linked-Size": str(entry.size),
        }
        self.send_body(status, b"", headers=headers)
        return True

    def _cdn(self, repo: str, commit: str, file_path: str) -> bool:
        if self.hub.take_fault(file_path, ("cdn403",)) is not None:
            # what an expired or mis-signed URL gets from S3/CloudFront-style storage
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self.send_body(403, body, "application/xml")
            return True
        fault = self.hub.take_fault(file_path, ("status",))
        if fault is not None:
            return self._send_fault(fault, "resolvers")
        return self._file(repo, commit, file_path)

    def _send_gzip(self, repo: str, commit: str, file_path: str) -> bool:
        """Content-Encoding gzip, chunked, no Content-Length (file_download.py http_get)."""
        body = gzip.compress(
            (self.hub.repo_dir(repo) / "commits" / commit / file_path).read_bytes()
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        return True

    def _file(self, repo: str, revision: str, file_path: str) -> bool:
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
    """One listening socket of the stand-in; `role` says which host it plays."""

    def __init__(
        self,
        hub: HubState,
        address: tuple[str, int],
        access_log: Path | None = None,
        role: str = "hub",
    ):
        self.hub = hub
        self.role = role
        hub.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(hub.workdir, address, HubHandler, access_log)
        hub.urls[role] = base_url(self.host, self.port)

    @property
    def host(self) -> str:
        addr = self.server_address[0]
        return addr if isinstance(addr, str) else bytes(addr).decode()


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class HubStandin:
    """In-process hub for tests: `with HubStandin(dir) as hub: hub.publish(...)`.

    The hub, its CDN (another port: another host to clients) and, with `mirror=True`, a
    mirror in front of it; all share one state and one access log.
    """

    def __init__(
        self,
        workdir: Path,
        bind: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        access_log: Path | None = None,
        mirror: bool = False,
    ) -> None:
        self.state = HubState(Path(workdir), token=token)
        self.server = HubServer(self.state, (bind, port), access_log)
        self.cdn = HubServer(self.state, (bind, 0), access_log, role="cdn")
        self.mirror = HubServer(self.state, (bind, 0), access_log, "mirror") if mirror else None
        self.access_log = access_log
        self._stack: contextlib.ExitStack | None = None

    @property
    def url(self) -> str:
        return self.state.urls["hub"]

    @property
    def cdn_url(self) -> str:
        return self.state.urls["cdn"]

    @property
    def mirror_url(self) -> str:
        return self.state.urls["mirror"]

    def publish(self, repo: str, source: Path, branch: str = "main") -> str:
        return publish(self.state, repo, source, branch)

    def set_faults(self, *faults: Fault, rate_bps: int | None = None) -> None:
        with self.state.lock:
            self.state.faults = list(faults)
            self.state.rate_bps = rate_bps

    def seen(self, role: str | None = None) -> list[Seen]:
        with self.state.lock:
            return [s for s in self.state.seen if role is None or s.role == role]

    def __enter__(self) -> HubStandin:
        self._stack = contextlib.ExitStack()
        for server in (self.server, self.cdn, self.mirror):
            if server is not None:
                self._stack.enter_context(serve_in_thread(server))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--publish", action="append", default=[], metavar="OWNER/NAME=DIR")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--access-log", type=Path)
    args = parser.parse_args(argv)
    hub = HubState(args.workdir, token=os.environ.get("HUB_STANDIN_TOKEN") or None)
    for item in args.publish:
        repo, _, src = item.partition("=")
        print(f"{repo}: {publish(hub, repo, Path(src))}", file=sys.stderr, flush=True)
    server = HubServer(hub, (args.bind, args.port), args.access_log)
    cdn = HubServer(hub, (args.bind, args.cdn_port), args.access_log, role="cdn")
    banner = f"hub stand-in on {hub.urls['hub']}/ (CDN {hub.urls['cdn']}/)"
    with serve_in_thread(cdn):
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
