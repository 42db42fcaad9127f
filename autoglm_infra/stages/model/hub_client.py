"""Resolve a model revision into a lock on the controller (requests against the hub API).

Used by the model stage when no stored lock exists (or `model_lock_update: true`), and
on its own to create the lock that production and air-gapped hosts use:

    python -m autoglm_infra.stages.model.hub_client --repo zai-org/AutoGLM-Phone-9B --revision main
    # writes data/models/huggingface/zai-org--AutoGLM-Phone-9B@main.json; commit it

The token (only for gated or private repositories) comes from the environment or a
private file via controller_secrets; it is sent as a header and never printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import requests

from autoglm_infra.common.secrets import Secret, SecretError, read_secret
from autoglm_infra.stages.model.lock import (
    LockError,
    ModelLock,
    lock_file_path,
    parse_hf_revision,
    parse_modelscope_files,
    read_lock,
    revision_url,
    write_lock,
)


class HubError(ValueError):
    """The hub cannot give us a lock; the message says what to do (no token inside)."""


def fetch_lock(
    source: str,
    endpoint: str,
    repo: str,
    revision: str,
    token: Secret | None = None,
    timeout: float = 30,
) -> ModelLock:
    """Ask the hub which commit `revision` is and every file's size and digest."""
    url = revision_url(source, endpoint, repo, revision)
    headers = {"User-Agent": "autoglm-infra"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token.reveal()}"
    try:
        response = requests.get(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise HubError(f"cannot reach the hub at {endpoint} to lock {repo}@{revision}: "
                       f"{type(exc).__name__}") from None  # fmt: skip
    if response.status_code in (401, 403):
        hint = "the token lacks access" if token else "set a token (hub_token_env/hub_token_file)"
        raise HubError(
            f"{endpoint} refused {repo}@{revision} (HTTP {response.status_code}): the repository "
            f"is gated, private or misspelt; {hint}"
        )
    if response.status_code == 404:
        raise HubError(f"{endpoint} has no {repo} at revision {revision!r} (HTTP 404): check "
                       "model_repo and model_revision")  # fmt: skip
    if response.status_code != 200:
        raise HubError(f"{endpoint} answered HTTP {response.status_code} for {url}")
    try:
        data = response.json()
    except ValueError:
        raise HubError(f"{endpoint} answered {url} with something that is not JSON") from None
    try:
        if source == "modelscope":
            return parse_modelscope_files(data, repo, revision, endpoint)
        return parse_hf_revision(data, repo, revision, endpoint)
    except LockError as exc:
        raise HubError(str(exc)) from None


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
    args = parser.parse_args(argv)
    endpoint = args.endpoint or (
        "https://www.modelscope.cn" if args.source == "modelscope" else "https://huggingface.co"
    )
    try:
        token = hub_token(args.token_env, args.token_file)
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
