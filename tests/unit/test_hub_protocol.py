"""The lock client and the host downloader against the hub as it really behaves.

The stand-in plays huggingface.co with its CDN on a second port (another host to the
clients), a renamed repository, gated access, RateLimit-only 429s, X-Error-* refusals,
gzip, an hf-mirror-like front answering 308, and ModelScope's cookie-authenticated
/api/v1 routes. The downloader runs in-process, or as its own process where the
interpreter matters (Python 3.10 has no urllib 308 handler).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm_infra.common.secrets import Secret
from autoglm_infra.host_tools import model_fetch
from autoglm_infra.stages.model.hub_client import HubError, fetch_lock, token_for_endpoint
from autoglm_infra.stages.model.lock import META_DIR, ModelLock, lock_from_json, lock_to_json
from autoglm_infra.stages.model.state import host_plan
from autoglm_testbed.hub_standin import Fault, HubStandin, make_test_repo, same_tree
from autoglm_testbed.static_http import read_access_log

REPO = "test-org/Tiny-Model"
SHARD = 2**20 + 12345
SHARD1 = "model-00001-of-00002.safetensors"
HELPER = Path(model_fetch.__file__)
GRANTED, OTHER = "hf_granted_account", "hf_other_account"


def python310() -> str | None:
    """A real CPython 3.10 (pyenv keeps them here; README: AUTOGLM_SLOW_PYTHONS)."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    return found[-1] if found else shutil.which("python3.10")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_repo(tmp_path_factory.mktemp("src") / "repo", shards=2, shard_size=SHARD)


@pytest.fixture
def hub(tmp_path: Path, source: Path) -> Iterator[HubStandin]:
    with HubStandin(tmp_path / "hub", access_log=tmp_path / "access.log", mirror=True) as h:
        h.publish(REPO, source)
        yield h


def write_plan(
    lock: ModelLock,
    endpoint: str,
    model: Path,
    token: str | None = None,
    attempts: int = 4,
    auth: str = "bearer",
) -> str:
    token_file = None
    if token is not None:
        token_file = model.parent / f"{model.name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
    path = model / META_DIR / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tf = str(token_file) if token_file else None
    path.write_bytes(host_plan(lock, endpoint, str(model), 2, attempts, 0.2, 0, tf, auth))
    return str(path)


def pull(plan: str) -> int:
    return model_fetch.run(plan, "stamp", False, retry_base=0.01, progress_every=1e9)


# -- the stand-in itself ------------------------------------------------------------------------


def test_lfs_resolve_redirects_to_a_signed_url_on_the_cdn_port(hub: HubStandin) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    url = f"{hub.url}/{REPO}/resolve/{lock.commit}/{SHARD1}"
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.build_opener(model_fetch._NoRedirect).open(url)
    assert answer.value.code == 302
    location = answer.value.headers["Location"]
    assert location.startswith(f"{hub.cdn_url}/_lfs/") and "Signature=" in location
    assert hub.cdn_url != hub.url
    assert answer.value.headers["X-Linked-Size"] == str(SHARD)


def test_text_files_come_gzipped_and_chunked_to_a_client_that_asks(
    hub: HubStandin, source: Path
) -> None:
    url = f"{hub.url}/{REPO}/resolve/main/config.json"
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert answer.headers["Content-Length"] is None
        assert gzip.decompress(answer.read()) == (source / "config.json").read_bytes()


def test_refusals_carry_the_hubs_error_headers(hub: HubStandin) -> None:
    hub.state.accounts.add(OTHER)
    hub.state.gated[REPO] = {GRANTED}
    url = f"{hub.url}/api/models/{REPO}/revision/main"
    answers = {}
    for token in (None, OTHER, "hf_bogus"):
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        headers = refused.value.headers
        answers[token] = (refused.value.code, headers["X-Error-Code"], headers["X-Error-Message"])
    assert answers[None][:2] == (401, "GatedRepo") and "Please log in" in answers[None][2]
    assert answers[OTHER][:2] == (403, "GatedRepo")
    assert "not in the authorized list" in answers[OTHER][2]
    assert answers["hf_bogus"] == (401, None, "Invalid credentials in Authorization header")


# -- redirects and tokens -------------------------------------------------------------------


def test_token_kept_on_a_renamed_repos_relative_307_and_dropped_at_the_cdn(
    tmp_path: Path, source: Path
) -> None:
    token = "hf_private_reader"
    with HubStandin(tmp_path / "hub", token=token) as hub:
        hub.publish(REPO, source)
        hub.state.renamed["test-org/Old-Name"] = REPO
        lock = fetch_lock("huggingface", hub.url, "test-org/Old-Name", "main", Secret(token, "t"))
        plan = write_plan(lock, hub.url, tmp_path / "m", token=token)
        assert "test-org/Old-Name/resolve/" in Path(plan).read_text()
        assert pull(plan) == 0
        assert same_tree(tmp_path / "m", source)
        hub_requests = hub.seen("hub")
        moved = [s for s in hub_requests if s.path.startswith(f"/{REPO}/resolve/")]
        assert moved and all(s.token for s in moved)  # same host: the token followed the 307
        assert hub.seen("cdn") and hub.state.cdn_auth_seen == []  # another host: dropped


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_every_redirect_status_to_the_cdn_is_followed(
    hub: HubStandin, tmp_path: Path, source: Path, status: int
) -> None:
    hub.state.cdn_redirect_status = status
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    assert same_tree(tmp_path / "m", source)
    statuses = {e.status for e in read_access_log(hub.access_log or Path())}
    assert status in statuses


def test_python310_follows_a_mirrors_cross_origin_308(
    hub: HubStandin, tmp_path: Path, source: Path
) -> None:
    interpreter = python310()
    if interpreter is None:
        pytest.skip("no Python 3.10 on this machine (pyenv install 3.10)")
    version = subprocess.run([interpreter, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert version.strip() == "(3, 10)"
    hub.state.mirror_redirect_status = 308  # hf-mirror.com -> huggingface.co
    hub.state.cdn_redirect_status = 308
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    plan = write_plan(lock, hub.mirror_url, tmp_path / "m")
    run = subprocess.run([interpreter, str(HELPER), "--plan", plan, "--retry-base", "0.01"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert same_tree(tmp_path / "m", source)
    assert {s.role for s in hub.seen()} >= {"mirror", "hub", "cdn"}


def test_token_stays_off_a_mirror_unless_the_user_opts_in() -> None:
    token = Secret("hf_secret", "env HF_TOKEN")
    kept, warning = token_for_endpoint("huggingface", "https://huggingface.co", token, False)
    assert kept is token and warning is None
    assert token_for_endpoint("huggingface", "https://hf.co", token, False)[0] is token
    for mirror in ("https://hf-mirror.com", "https://huggingface.co.evil.example"):
        withheld, warning = token_for_endpoint("huggingface", mirror, token, False)
        assert withheld is None and warning is not None
        assert f"not sent to {mirror}" in warning and "hub_token_to_mirror: true" in warning
        assert "hf_secret" not in warning
    assert token_for_endpoint("huggingface", "https://hf-mirror.com", token, True)[0] is token
    ms = "https://www.modelscope.cn"
    assert token_for_endpoint("modelscope", ms, token, False)[0] is token


def test_identity_encoding_is_asked_for_every_file(hub: HubStandin, tmp_path: Path) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    files = [s for s in hub.seen() if "/api/" not in s.path]
    assert files and {s.accept_encoding for s in files} == {"identity"}
    api = [s for s in hub.seen() if "/api/" in s.path]
    assert api and {s.accept_encoding for s in api} == {"identity"}


# -- rate limits and retries ----------------------------------------------------------------


def test_a_spent_ratelimit_window_is_waited_out_with_a_line_saying_so(
    hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(Fault("status", SHARD1, times=1, status=429, ratelimit_reset=1))
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    err = capsys.readouterr().err
    assert (
        f"{SHARD1}: HTTP 429: the hub's 'resolvers' rate limit of 3000 requests per 300 s "
        "is spent, resets in 1 s; waiting 2 s (retry 1/3)"
    ) in err
    shard = [e for e in read_access_log(hub.access_log or Path()) if SHARD1 in e.path]
    limited = next(e for e in shard if e.status == 429)
    after = next(e for e in shard if e.ts > limited.ts and e.status != 429)
    # the wait is the announced reset + 1 s, not the 0.01 s backoff (log ts: response end)
    assert after.ts - limited.ts >= 1.9


def test_tries_start_again_whenever_bytes_arrived(
    hub: HubStandin, tmp_path: Path, source: Path
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(Fault("drop", SHARD1, times=5, after_bytes=200_000))
    assert pull(write_plan(lock, hub.url, tmp_path / "m", attempts=3)) == 0
    assert same_tree(tmp_path / "m", source)


def test_a_cdn_refusing_its_signed_url_is_retried_through_the_hub(
    hub: HubStandin, tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(Fault("cdn403", SHARD1, times=1))
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    assert "HTTP 403 from the CDN" in capsys.readouterr().err
    assert same_tree(tmp_path / "m", source)


def test_the_lock_request_is_retried_on_503_and_on_a_spent_window(
    hub: HubStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.set_faults(Fault("status", "@api", times=2, status=503))
    lock = fetch_lock("huggingface", hub.url, REPO, "main", retry_base=0.01)
    assert len(lock.files) == 5
    hub.set_faults(Fault("status", "@api", times=1, status=429, ratelimit_reset=0))
    started = time.monotonic()
    assert fetch_lock("huggingface", hub.url, REPO, "main", retry_base=0.01) == lock
    assert time.monotonic() - started >= 0.9
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "'api' rate limit" in err and "waiting 1 s" in err
    hub.set_faults(Fault("status", "@api", times=-1, status=503))
    with pytest.raises(HubError, match="gave up after 2 tries"):
        fetch_lock("huggingface", hub.url, REPO, "main", attempts=2, retry_base=0.01)


# -- the hub's own words --------------------------------------------------------------------


def test_gated_repo_messages_quote_the_hub_and_say_what_to_do(
    hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.state.accounts.add(OTHER)
    hub.state.gated[REPO] = {GRANTED}
    with pytest.raises(HubError) as not_granted:
        fetch_lock("huggingface", hub.url, REPO, "main", Secret(OTHER, "t"))
    message = str(not_granted.value)
    assert "HTTP 403 GatedRepo" in message and "not in the authorized list. Visit" in message
    assert "ask for access on the repository's page" in message and OTHER not in message
    with pytest.raises(HubError, match=r"HTTP 401 GatedRepo: .*Please log in.*set a token"):
        fetch_lock("huggingface", hub.url, REPO, "main")
    with pytest.raises(HubError, match=r"Invalid credentials.*the token was refused"):
        fetch_lock("huggingface", hub.url, REPO, "main", Secret("hf_bogus", "t"))

    lock = fetch_lock("huggingface", hub.url, REPO, "main", Secret(GRANTED, "t"))
    assert pull(write_plan(lock, hub.url, tmp_path / "m", token=OTHER)) == 1
    err = capsys.readouterr().err
    assert f"{REPO} is restricted and you are not in the authorized list" in err
    assert "ask for access on the repository's page" in err and OTHER not in err


# -- ModelScope -------------------------------------------------------------------------------


def test_modelscope_cookie_master_branch_and_files_without_sha256(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "ms_session_token"
    with HubStandin(tmp_path / "hub", token=token) as hub:
        commit = hub.publish(REPO, source, branch="master")
        hub.state.ms_without_sha256 = {"config.json", SHARD1}
        with pytest.raises(HubError) as wrong_branch:
            fetch_lock("modelscope", hub.url, REPO, "main", Secret(token, "t"))
        assert "no revision 'main'" in str(wrong_branch.value)
        assert "its branches are master" in str(wrong_branch.value)

        lock = fetch_lock("modelscope", hub.url, REPO, "master", Secret(token, "t"))
        assert lock.commit == commit
        assert {f.commit for f in lock.files} == {commit}
        hashed = {f.path: f for f in lock.files if f.sha256_from_download}
        assert set(hashed) == {"config.json", SHARD1}
        for path, f in hashed.items():
            assert f.sha256 == hashlib.sha256((source / path).read_bytes()).hexdigest()
        assert "config.json: listed without a Sha256; hashed" in capsys.readouterr().err
        assert lock_from_json(lock_to_json(lock)) == lock
        assert json.loads(lock_to_json(lock))["files"][0]["commit"] == commit

        plan = write_plan(lock, hub.url, tmp_path / "m", token=token, auth="modelscope")
        assert pull(plan) == 0
        assert same_tree(tmp_path / "m", source)
        api = [s for s in hub.seen("hub") if s.path.startswith("/api/v1/")]
        assert api and all(s.cookie for s in api)
        assert hub.seen("cdn") and hub.state.cdn_auth_seen == []


def test_modelscope_refuses_a_bearer_token_without_the_cookie(tmp_path: Path, source: Path) -> None:
    token = "ms_session_token"
    with HubStandin(tmp_path / "hub", token=token) as hub:
        hub.publish(REPO, source, branch="master")
        url = f"{hub.url}/api/v1/models/{REPO}/repo/files?Revision=master&Recursive=True"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 401
        request.add_header("Cookie", f"m_session_id={token}")
        with urllib.request.urlopen(request) as answer:
            files = json.load(answer)["Data"]["Files"]
        assert {f["Path"] for f in files} == {
            p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()
        }
