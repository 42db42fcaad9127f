"""Model locks: a pinned commit plus every file's size and digest. Pure: no pyinfra import.

A lock is resolved once from a hub API (Hugging Face revision info, or ModelScope's file
list), stored under data/models/ and committed, so production converges and air-gapped
hosts need no hub API. LFS files carry a sha256; small git files on Hugging Face only a
git blob id (sha1 of "blob <len>\\0" + content), which the host helper checks instead.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_VERSION = 1
SOURCES = ("huggingface", "modelscope")
META_DIR = ".autoglm"  # inside model_dir: host plan, stamps; never a model file
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class LockError(ValueError):
    """A hub answer or a lock file cannot be turned into a valid lock; says why."""


@dataclass(frozen=True)
class LockedFile:
    path: str  # relative, '/'-separated
    size: int
    sha256: str | None = None
    git_oid: str | None = None  # git blob sha1, for files that are not in LFS
    commit: str | None = None  # the commit that last changed it (ModelScope lists it)
    sha256_from_download: bool = False  # the hub listed no hash: we hashed its bytes

    @property
    def digest(self) -> str:
        """What the host checks: 'sha256:<hex>' when known, else 'gitsha1:<hex>'."""
        return f"sha256:{self.sha256}" if self.sha256 else f"gitsha1:{self.git_oid}"


@dataclass(frozen=True)
class ModelLock:
    source: str
    repo: str
    revision: str  # as requested (branch, tag or commit)
    commit: str  # what it resolved to
    files: tuple[LockedFile, ...]
    resolved_from: str = ""  # endpoint the lock came from (informational)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, LockedFile]:
        return {f.path: f for f in self.files}


def check_path(path: str) -> str:
    """A safe relative file path inside the model directory."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 or c == "\\" for c in path)
        or parts[0] == META_DIR
        or path.endswith(".partial")
    ):
        raise LockError(f"unsafe file path in lock: {path!r}")
    return path


def make_file(
    path: Any,
    size: Any,
    sha256: Any = None,
    git_oid: Any = None,
    commit: Any = None,
    sha256_from_download: bool = False,
    unhashed_ok: bool = False,
) -> LockedFile:
    if not isinstance(path, str):
        raise LockError(f"file path must be a string, got {path!r}")
    check_path(path)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise LockError(f"{path}: size must be a non-negative integer, got {size!r}")
    sha = sha256.lower() if isinstance(sha256, str) and sha256 else None
    oid = git_oid.lower() if isinstance(git_oid, str) and git_oid else None
    if sha is not None and not _HEX64.match(sha):
        raise LockError(f"{path}: sha256 must be 64 hex digits, got {sha256!r}")
    if oid is not None and not _HEX40.match(oid):
        raise LockError(f"{path}: git blob id must be 40 hex digits, got {git_oid!r}")
    if sha is None and oid is None and not unhashed_ok:
        raise LockError(f"{path}: the hub gave neither a sha256 nor a git blob id")
    rev = commit.lower() if isinstance(commit, str) and _HEX40.match(commit.lower()) else None
    return LockedFile(path, size, sha, oid, rev, sha256_from_download and sha is not None)


def make_lock(
    source: str,
    repo: str,
    revision: str,
    commit: str,
    files: list[LockedFile],
    resolved_from: str = "",
) -> ModelLock:
    if source not in SOURCES:
        raise LockError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    if not commit:
        raise LockError(f"{repo}@{revision}: the hub did not say which commit it resolved to")
    if not files:
        raise LockError(f"{repo}@{revision}: the hub lists no files")
    seen: set[str] = set()
    for f in files:
        if f.path in seen:
            raise LockError(f"{repo}@{revision}: file {f.path} is listed twice")
        seen.add(f.path)
    ordered = tuple(sorted(files, key=lambda f: f.path))
    return ModelLock(source, repo, revision, commit, ordered, resolved_from)


# -- hub API answers -----------------------------------------------------------------------


def parse_hf_revision(data: Any, repo: str, revision: str, endpoint: str = "") -> ModelLock:
    """Lock from `GET /api/models/{repo}/revision/{rev}?blobs=true` (Hugging Face or mirror).

    `sha` is the commit; `siblings[]` have `rfilename`, `size`, `blobId` and, for LFS
    files, `lfs: {sha256, size}` (the tree API calls the same hash `lfs.oid`; both work).
    """
    if not isinstance(data, Mapping):
        raise LockError(f"{repo}@{revision}: revision info is not a JSON object")
    commit = data.get("sha")
    if not isinstance(commit, str) or not _HEX40.match(commit):
        raise LockError(f"{repo}@{revision}: revision info has no 40-hex 'sha' (got {commit!r})")
    siblings = data.get("siblings")
    if not isinstance(siblings, list):
        raise LockError(f"{repo}@{revision}: revision info has no 'siblings' list")
    files = []
    for item in siblings:
        if not isinstance(item, Mapping):
            raise LockError(f"{repo}@{revision}: sibling entry is not an object: {item!r}")
        name = item.get("rfilename")
        lfs = item.get("lfs")
        if isinstance(lfs, Mapping):
            size = lfs.get("size", item.get("size"))
            sha = lfs.get("sha256") or lfs.get("oid")
        else:
            size, sha = item.get("size"), None
        if size is None:
            raise LockError(
                f"{repo}@{revision}: {name}: no size in revision info; the endpoint must "
                "honour ?blobs=true (an HF-compatible mirror that drops it cannot be locked "
                "from; lock from huggingface.co and pull from the mirror)"
            )
        files.append(make_file(name, size, sha, item.get("blobId")))
    return make_lock("huggingface", repo, revision, commit, files, endpoint)


def parse_modelscope_files(
    data: Any,
    repo: str,
    revision: str,
    endpoint: str = "",
    commit: str | None = None,
    unhashed_ok: bool = False,
) -> ModelLock:
    """Lock from ModelScope `GET /api/v1/models/{id}/repo/files?Revision=..&Recursive=true`.

    `Data.Files[]` have `Path`, `Size`, `Sha256` (optional: modelscope's own download checks
    it only `if FILE_HASH in file_meta`), `Type` ('blob' or 'tree') and `Revision`, the
    commit that last changed the file (kept per file). `commit` is the branch's or tag's
    CommitId from `/revisions` when known, else the revision itself; downloads name the
    revision (the SDK only ever passes branch and tag names), so the per-file sha256 is
    what guards against a moved branch. With `unhashed_ok`, files without `Sha256` are
    returned without a digest, for the caller to hash (hub_client does, from a download).
    """
    if not isinstance(data, Mapping):
        raise LockError(f"{repo}@{revision}: ModelScope answer is not a JSON object")
    code = data.get("Code", 200)
    if code != 200:
        raise LockError(f"{repo}@{revision}: ModelScope said {code}: {data.get('Message')}")
    body = data.get("Data")
    listed = body.get("Files") if isinstance(body, Mapping) else None
    if not isinstance(listed, list):
        raise LockError(f"{repo}@{revision}: ModelScope answer has no Data.Files list")
    files = []
    for item in listed:
        if not isinstance(item, Mapping):
            raise LockError(f"{repo}@{revision}: file entry is not an object: {item!r}")
        if item.get("Type", "blob") != "blob":
            continue
        files.append(
            make_file(
                item.get("Path"),
                item.get("Size"),
                item.get("Sha256"),
                commit=item.get("Revision"),
                unhashed_ok=unhashed_ok,
            )
        )
    return make_lock("modelscope", repo, revision, commit or revision, files, endpoint)


def revision_url(source: str, endpoint: str, repo: str, revision: str) -> str:
    """The API request that lists every file of `repo` at `revision` with its digest."""
    base = endpoint.rstrip("/")
    rev = urllib.parse.quote(revision, safe="")
    if source == "modelscope":
        return f"{base}/api/v1/models/{repo}/repo/files?Revision={rev}&Recursive=true"
    return f"{base}/api/models/{repo}/revision/{rev}?blobs=true"


def download_url(lock: ModelLock, endpoint: str, path: str) -> str:
    """Where the host fetches one file of the lock, always at the pinned commit."""
    base = endpoint.rstrip("/")
    if lock.source == "modelscope":  # branch or tag name: see parse_modelscope_files
        query = urllib.parse.urlencode({"Revision": lock.revision, "FilePath": path})
        return f"{base}/api/v1/models/{lock.repo}/repo?{query}"
    return f"{base}/{lock.repo}/resolve/{lock.commit}/{urllib.parse.quote(path)}"


# -- lock files ----------------------------------------------------------------------------


def lock_file_path(lock_dir: str | Path, source: str, repo: str, revision: str) -> Path:
    """data/models/<source>/<owner>--<name>@<revision>.json (revision '/' escaped)."""
    owner, name = repo.split("/", 1)
    rev = revision.replace("%", "%25").replace("/", "%2F")
    return Path(lock_dir) / source / f"{owner}--{name}@{rev}.json"


def file_to_json(f: LockedFile) -> dict[str, Any]:
    doc: dict[str, Any] = {"path": f.path, "size": f.size, "sha256": f.sha256, "git_oid": f.git_oid}
    if f.commit:
        doc["commit"] = f.commit
    if f.sha256_from_download:
        doc["sha256_from"] = "download"  # the hub listed none; hashed when first fetched
    return doc


def lock_to_json(lock: ModelLock) -> str:
    doc = {
        "lock_version": LOCK_VERSION,
        "source": lock.source,
        "repo": lock.repo,
        "revision": lock.revision,
        "commit": lock.commit,
        "resolved_from": lock.resolved_from,
        "total_size": lock.total_size,
        "files": [file_to_json(f) for f in lock.files],
    }
    return json.dumps(doc, indent=1) + "\n"


def lock_from_json(text: str, origin: str = "lock") -> ModelLock:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockError(f"{origin}: not valid JSON ({exc})") from None
    if not isinstance(doc, Mapping) or doc.get("lock_version") != LOCK_VERSION:
        raise LockError(f"{origin}: not a version-{LOCK_VERSION} model lock")
    try:
        files = [
            make_file(
                f.get("path"),
                f.get("size"),
                f.get("sha256"),
                f.get("git_oid"),
                f.get("commit"),
                f.get("sha256_from") == "download",
            )
            for f in doc["files"]
        ]
        return make_lock(
            str(doc["source"]),
            str(doc["repo"]),
            str(doc["revision"]),
            str(doc["commit"]),
            files,
            str(doc.get("resolved_from", "")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise LockError(f"{origin}: missing or malformed field {exc}") from None
    except LockError as exc:
        raise LockError(f"{origin}: {exc}") from None


def read_lock(path: Path) -> ModelLock:
    return lock_from_json(path.read_text(encoding="utf-8"), str(path))


def write_lock(path: Path, lock: ModelLock) -> None:
    """Atomically (temp file + rename), so a crash never leaves half a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(lock_to_json(lock))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
