"""Resolve a model revision into a lock on the controller (requests against the hub API).

Used by the model stage when no stored lock exists (or `model_lock_update: true`), and
on its own to create the lock that production and air-gapped hosts use:

    python -m autoglm_infra.stages.model.hub_client --repo zai-org/AutoGLM-Phone-9B --revision main
    # writes data/models/huggingface/zai-org--AutoGLM-Phone-9B@main.json; commit it

The token (only for gated or private repositories) comes from the environment or a
private file via controller_secrets; it is sent as a header (ModelScope: also its
m_session_id cookie), only to the endpoint's own host, and never printed. An endpoint that
is not the source's own hub gets no token unless the user opts in (hub_token_to_mirror).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm_infra.common.secrets import Secret, SecretError, read_secret
from autoglm_infra.host_tools.model_fetch import (
    MAX_REDIRECTS,
    RATELIMIT_MAX_WAIT,
    REDIRECTS,
    auth_headers,
    hub_refusal,
    parse_ratelimit,
    same_origin,
)
from autoglm_infra.stages.model.lock import (
    LockError,
    ModelLock,
    download_url,
    lock_file_path,
    make_lock,
    parse_hf_revision,
    parse_modelscope_files,
    read_lock,
    revision_url,
    write_lock,
)

if TYPE_CHECKING:  # imported where a hub is asked: a no-op converge never asks one
    import requests

# Hosts whose own token it is: anything else is a mirror, which gets no token unless the
# user opts in (hub_token_to_mirror), so a third-party mirror never sees an HF token.
OFFICIAL_HOSTS = {
    "huggingface": ("huggingface.co", "hf.co"),
    "modelscope": ("modelscope.cn", "modelscope.ai"),
}
RETRY_STATUSES = (429, 500, 502, 503, 504)


class HubError(ValueError):
    """The hub cannot give us a lock; the message says what to do (no token inside)."""


def _stderr(message: str) -> None:
    print(f"hub: {message}", file=sys.stderr, flush=True)


def official_endpoint(source: str, endpoint: str) -> bool:
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in OFFICIAL_HOSTS.get(source, ()))


def token_for_endpoint(
    source: str, endpoint: str, token: Secret | None, to_mirror: bool
) -> tuple[Secret | None, str | None]:
    """(the token to use with `endpoint`, a warning when one is withheld)."""
    if token is None or to_mirror or official_endpoint(source, endpoint):
        return token, None
    return None, (
        f"the hub token ({token.source}) is not sent to {endpoint}, which is not "
        f"{OFFICIAL_HOSTS[source][0]}; set hub_token_to_mirror: true if this mirror needs it"
    )


class HubHttp:
    """GETs against one hub: redirects followed here (the token only on the endpoint's own
    scheme and host), 429/5xx and dropped connections retried with backoff, a spent
    RateLimit window waited out (bounded) with a line saying so."""

    def __init__(
        self,
        endpoint: str,
        secret: Mapping[str, str],
        timeout: float = 30,
        attempts: int = 5,
        retry_base: float = 1.0,
        note: Callable[[str], None] = _stderr,
    ) -> None:
        self.endpoint = endpoint
        self.secret = dict(secret)
        self.timeout = timeout
        self.attempts = attempts
        self.retry_base = retry_base
        self.note = note
        import requests

        self.session = requests.Session()
        self.session.trust_env = True  # proxies from the environment, as before

    def get(self, url: str, stream: bool = False, what: str = "") -> requests.Response:
        import requests

        delay = self.retry_base
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._follow(url, stream)
            except requests.RequestException as exc:
                problem, wait = (
                    f"cannot reach the hub at {self.endpoint}: {type(exc).__name__}",
                    delay,
                )
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                limited = parse_ratelimit(response.headers) if response.status_code == 429 else None
                response.close()
                problem = f"{self.endpoint} answered HTTP {response.status_code}"
                if limited is not None:
                    wait = min(limited[0], RATELIMIT_MAX_WAIT)
                    problem += f" ({limited[1]})"
                else:
                    wait = delay
            if attempt == self.attempts:
                raise HubError(f"{problem} for {what or url}; gave up after {attempt} tries")
            self.note(f"{problem} for {what or url}; waiting {wait:.0f} s (try {attempt}/"
                      f"{self.attempts})")  # fmt: skip
            time.sleep(wait)
            delay = min(delay * 2, 60)
        raise AssertionError("unreachable")

    def _follow(self, url: str, stream: bool) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"User-Agent": "autoglm-infra", "Accept-Encoding": "identity"}
            if same_origin(url, self.endpoint):
                headers.update(self.secret)
            response = self.session.get(
                url, headers=headers, timeout=self.timeout, allow_redirects=False, stream=stream
            )
            location = response.headers.get("Location")
            if response.status_code not in REDIRECTS or not location:
                return response
            response.close()
            url = urllib.parse.urljoin(url, location)
        raise HubError(f"more than {MAX_REDIRECTS} redirects from {self.endpoint}, last to {url}")


def _json(response: requests.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise HubError(f"{what}: the answer is not JSON (HTTP {response.status_code})") from None


def _refused(source: str, response: requests.Response, token_sent: bool, what: str) -> HubError:
    code = response.status_code
    if source == "modelscope":
        try:
            body = response.json()
        except ValueError:
            body = {}
        said = body.get("Message") if isinstance(body, Mapping) else None
        hint = (
            "the token (sent as the m_session_id cookie) lacks access"
            if token_sent
            else "set a ModelScope token (hub_token_env/hub_token_file)"
        )
        return HubError(f"{what}: HTTP {code}{f': ModelScope said {said!r}' if said else ''}; "
                        f"{hint}, and check model_repo and model_revision")  # fmt: skip
    return HubError(hub_refusal(code, response.headers, token_sent, what))


def fetch_lock(
    source: str,
    endpoint: str,
    repo: str,
    revision: str,
    token: Secret | None = None,
    timeout: float = 30,
    attempts: int = 5,
    retry_base: float = 1.0,
    note: Callable[[str], None] = _stderr,
) -> ModelLock:
    """Ask the hub which commit `revision` is and every file's size and digest."""
    auth = "modelscope" if source == "modelscope" else "bearer"
    secret = auth_headers(token.reveal() if token is not None else None, auth)
    http = HubHttp(endpoint, secret, timeout, attempts, retry_base, note)
    what = f"{endpoint} refused {repo}@{revision}"
    commit = None
    if source == "modelscope":
        commit = _modelscope_commit(http, endpoint, repo, revision, bool(secret))
    url = revision_url(source, endpoint, repo, revision)
    response = http.get(url, what=f"{repo}@{revision}")
    if response.status_code in (401, 403, 404):
        raise _refused(source, response, bool(secret), what)
    if response.status_code != 200:
        raise HubError(f"{endpoint} answered HTTP {response.status_code} for {url}")
    data = _json(response, f"{endpoint} answered {url}")
    try:
        if source == "modelscope":
            lock = parse_modelscope_files(data, repo, revision, endpoint, commit, unhashed_ok=True)
            return _hash_unlisted(http, lock, endpoint, note)
        return parse_hf_revision(data, repo, revision, endpoint)
    except LockError as exc:
        raise HubError(str(exc)) from None


def _modelscope_commit(
    http: HubHttp, endpoint: str, repo: str, revision: str, token_sent: bool
) -> str | None:
    """The CommitId of `revision`, which must name a branch or tag (as the SDK's
    get_valid_revision insists); ModelScope's default branch is master, not main."""
    url = f"{endpoint.rstrip('/')}/api/v1/models/{repo}/revisions"
    response = http.get(url, what=f"the revisions of {repo}")
    if response.status_code != 200:
        raise _refused("modelscope", response, token_sent, f"{endpoint} refused {repo}")
    body = _json(response, f"{endpoint} answered {url}")
    data = body.get("Data") if isinstance(body, Mapping) else None
    revisions = data.get("RevisionMap") if isinstance(data, Mapping) else None
    if not isinstance(revisions, Mapping):
        return None  # an endpoint without the listing: the file list still checks it
    named = {}
    for kind in ("Branches", "Tags"):
        for item in revisions.get(kind) or []:
            if isinstance(item, Mapping) and isinstance(item.get("Revision"), str):
                named[item["Revision"]] = (kind, item.get("CommitId"))
    if revision not in named:
        branches = ", ".join(n for n, (k, _) in named.items() if k == "Branches") or "none"
        tags = ", ".join(n for n, (k, _) in named.items() if k == "Tags") or "none"
        default = " (ModelScope's default branch is master)" if "master" in named else ""
        raise HubError(
            f"{endpoint} has no revision {revision!r} of {repo}: its branches are {branches}; "
            f"its tags {tags}. Set model_revision to one of them{default}"
        )
    commit = named[revision][1]
    return commit if isinstance(commit, str) and commit else None


def _hash_unlisted(
    http: HubHttp, lock: ModelLock, endpoint: str, note: Callable[[str], None]
) -> ModelLock:
    """Hash the files the hub listed without a digest from one download each, here."""
    files = []
    for f in lock.files:
        if f.sha256 or f.git_oid:
            files.append(f)
            continue
        url = download_url(lock, endpoint, f.path)
        hasher, size = hashlib.sha256(), 0
        with http.get(url, stream=True, what=f.path) as response:
            if response.status_code != 200:
                raise HubError(f"{endpoint} answered HTTP {response.status_code} for {f.path}, "
                               "which it lists without a Sha256 (needed to hash it)")  # fmt: skip
            for chunk in response.iter_content(1 << 20):
                hasher.update(chunk)
                size += len(chunk)
        if size != f.size:
            raise HubError(f"{f.path}: the hub lists {f.size} bytes but sent {size}")
        note(f"{f.path}: listed without a Sha256; hashed from a download ({size} bytes)")
        files.append(dataclasses.replace(f, sha256=hasher.hexdigest(), sha256_from_download=True))
    return make_lock(lock.source, lock.repo, lock.revision, lock.commit, files, lock.resolved_from)


def hub_token(env_var: str, file_path: str | None) -> Secret | None:
    try:
        return read_secret(env_var, file_path)
    except SecretError as exc:
        raise HubError(f"hub token: {exc}") from None


_cache: dict[tuple[str, ...], ModelLock] = {}


def obtain_lock(
    lock_dir: str | Path,
    source: str,
    endpoint: str,
    repo: str,
    revision: str,
    token: Secret | None,
    update: bool = False,
) -> tuple[ModelLock, str]:
    """(lock, where it came from): the stored lock, else a fresh one written to lock_dir.

    Cached per process so a run over many hosts asks the hub once.
    """
    path = lock_file_path(lock_dir, source, repo, revision)
    key = (str(path), endpoint, str(update))
    if key in _cache:
        return _cache[key], f"lock {path}"
    if path.exists() and not update:
        try:
            lock = read_lock(path)
        except LockError as exc:
            raise HubError(f"{exc}; fix or delete it (it is re-created from the hub)") from None
        if (lock.repo, lock.revision, lock.source) != (repo, revision, source):
            raise HubError(
                f"{path} locks {lock.source}:{lock.repo}@{lock.revision}, not "
                f"{source}:{repo}@{revision}; delete it or fix model_lock_dir"
            )
        origin = f"stored lock {path}"
    else:
        try:
            lock = fetch_lock(source, endpoint, repo, revision, token)
        except HubError as exc:
            raise HubError(
                f"{exc}. No stored lock at {path}: create it where the hub is reachable "
                "(python -m autoglm_infra.stages.model.hub_client "
                f"--repo {repo} --revision {revision}) "
                "and commit it"
            ) from None
        write_lock(path, lock)
        origin = f"{endpoint} (written to {path})"
    _cache[key] = lock
    return lock, origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Resolve a model revision into a lock file.")
    parser.add_argument("--repo", required=True, help="owner/name, e.g. zai-org/AutoGLM-Phone-9B")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--source", choices=("huggingface", "modelscope"), default="huggingface")
    parser.add_argument("--endpoint", default=None, help="hub URL (default: the source's own)")
    parser.add_argument("--lock-dir", default="data/models")
    parser.add_argument("--token-env", default="HF_TOKEN")
    parser.add_argument("--token-file", default=None)
    parser.add_argument(
        "--token-to-mirror", action="store_true", help="send the token to a mirror --endpoint"
    )
    args = parser.parse_args(argv)
    endpoint = args.endpoint or (
        "https://www.modelscope.cn" if args.source == "modelscope" else "https://huggingface.co"
    )
    try:
        token = hub_token(args.token_env, args.token_file)
        token, warning = token_for_endpoint(args.source, endpoint, token, args.token_to_mirror)
        if warning:
            _stderr(warning)
        lock = fetch_lock(args.source, endpoint, args.repo, args.revision, token)
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = lock_file_path(args.lock_dir, args.source, args.repo, args.revision)
    write_lock(path, lock)
    gib = lock.total_size / 1024**3
    print(f"{path}: {args.repo}@{args.revision} = {lock.commit}, {len(lock.files)} files, "
          f"{gib:.2f} GiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
