"""The host helper against the hub stand-in on 127.0.0.1: resume, faults, atomicity, stamps.

The helper runs in-process (its `run`) except where a real kill is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm_infra.common.secrets import Secret
from autoglm_infra.doctor.facts import ModelContentsFact
from autoglm_infra.doctor.model import (
    ModelContents,
    contents_script,
    model_contents_check,
    parse_contents,
)
from autoglm_infra.host_tools import model_fetch
from autoglm_infra.stages.model import hub_client
from autoglm_infra.stages.model.hub_client import HubError, fetch_lock, obtain_lock
from autoglm_infra.stages.model.lock import META_DIR, ModelLock
from autoglm_infra.stages.model.state import host_plan, listing_script, parse_listing, plan_model
from autoglm_testbed.hub_standin import Fault, HubStandin, make_test_repo, same_tree
from autoglm_testbed.static_http import AccessLogEntry, read_access_log
from autoglm_testbed.waiting import wait_until

REPO = "test-org/Tiny-Model"
SHARD = 3 * 2**20
SHARD1 = "model-00001-of-00003.safetensors"
HELPER = Path(model_fetch.__file__)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_repo(tmp_path_factory.mktemp("src") / "repo", shards=3, shard_size=SHARD)


@pytest.fixture
def hub(tmp_path: Path, source: Path) -> Iterator[HubStandin]:
    with HubStandin(tmp_path / "hub", access_log=tmp_path / "access.log") as standin:
        standin.publish(REPO, source)
        yield standin


def write_plan(
    lock: ModelLock,
    endpoint: str,
    model_dir: Path,
    margin: int = 0,
    token_file: str | None = None,
    attempts: int = 4,
) -> str:
    path = model_dir / META_DIR / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        host_plan(lock, endpoint, str(model_dir), 2, attempts, 0.2, margin, token_file)
    )
    return str(path)


def pull(plan: str, verify: str = "stamp", prune: bool = False) -> int:
    return model_fetch.run(plan, verify, prune, retry_base=0.01, progress_every=0.0)


def file_gets(hub: HubStandin) -> list[AccessLogEntry]:
    assert hub.access_log is not None
    return [  # the CDN's signed query left out
        replace(e, path=e.path.partition("?")[0])
        for e in read_access_log(hub.access_log)
        if e.method == "GET" and "/api/" not in e.path and e.status in (200, 206)
    ]


@pytest.fixture
def pulled(hub: HubStandin, tmp_path: Path, source: Path) -> tuple[ModelLock, Path, str]:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    model = tmp_path / "model"
    plan = write_plan(lock, hub.url, model)
    assert pull(plan) == 0
    assert same_tree(model, source)
    return lock, model, plan


def controller_view(lock: ModelLock, model: Path, verify: str = "stamp") -> list[str]:
    """What the stage decides from the real one-command listing (`find`, no reads)."""
    out = subprocess.run(["sh", "-c", listing_script(str(model))], capture_output=True,
                         text=True, check=True).stdout.splitlines()  # fmt: skip
    plan = plan_model(lock, parse_listing(out), verify)  # type: ignore[arg-type]
    return list(plan.todo) if plan.run_helper else []


def test_fresh_pull_then_rerun_reads_and_fetches_nothing(
    pulled: tuple[ModelLock, Path, str], hub: HubStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock, model, plan = pulled
    assert not list(model.rglob("*.partial"))
    assert len(file_gets(hub)) == len(lock.files)  # LFS via the CDN hop, json directly
    assert controller_view(lock, model) == []

    def no_hashing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stamped re-run must not read any file")

    monkeypatch.setattr(model_fetch, "hash_file", no_hashing)
    before = len(read_access_log(hub.access_log or Path()))
    assert pull(plan) == 0
    assert len(read_access_log(hub.access_log or Path())) == before


def test_same_size_corruption_is_caught_by_full_verify(
    pulled: tuple[ModelLock, Path, str], source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock, model, plan = pulled
    shard = model / "model-00002-of-00003.safetensors"
    st = shard.stat()
    with shard.open("r+b") as fh:  # bit rot: same size, mtime put back, same inode
        fh.seek(12345)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert controller_view(lock, model) == []  # the stamp cannot see it, by design
    assert pull(plan, "full") == 0
    assert "content does not match the lock" in capsys.readouterr().err
    assert same_tree(model, source)


def test_changed_file_is_fetched_again_on_stamp_verify(
    pulled: tuple[ModelLock, Path, str], source: Path
) -> None:
    lock, model, plan = pulled
    with (model / SHARD1).open("ab") as fh:
        fh.write(b"junk")
    (model / "config.json").touch()  # only touched: re-hashed, not downloaded
    assert controller_view(lock, model) == ["config.json", SHARD1]
    assert pull(plan) == 0
    assert same_tree(model, source)
    assert controller_view(lock, model) == []


def test_429_and_503_back_off_then_succeed(
    hub: HubStandin, tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(
        Fault("status", SHARD1, times=2, status=429, retry_after=0.05),
        Fault("status", "config.json", times=1, status=503),
    )
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    err = capsys.readouterr().err
    assert f"{SHARD1}: HTTP 429; retry 1/3" in err and "config.json: HTTP 503" in err
    assert same_tree(tmp_path / "m", source)
    statuses = [e.status for e in read_access_log(hub.access_log or Path())]
    assert statuses.count(429) == 2 and statuses.count(503) == 1


def test_dropped_connection_resumes_with_range(
    hub: HubStandin, tmp_path: Path, source: Path
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(Fault("drop", SHARD1, times=2, after_bytes=2**20))
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    assert same_tree(tmp_path / "m", source)
    shard_gets = [e for e in file_gets(hub) if e.path.endswith(SHARD1)]
    assert [e.range for e in shard_gets] == [None, f"bytes={2**20}-", f"bytes={2 * 2**20}-"]
    assert sum(e.bytes for e in shard_gets) == SHARD  # no byte fetched twice


def test_all_tries_fail_names_file_and_keeps_partial(
    hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(Fault("status", SHARD1, times=-1, status=503))
    model = tmp_path / "m"
    assert pull(write_plan(lock, hub.url, model, attempts=3)) == 1
    err = capsys.readouterr().err
    assert f"ERROR {SHARD1}: gave up after 3 tries (model_download_attempts)" in err
    assert not (model / SHARD1).exists()  # nothing partial at a final path


def test_wrong_bytes_fail_cleanly_and_keep_the_old_file(
    pulled: tuple[ModelLock, Path, str],
    hub: HubStandin,
    tmp_path: Path,
    source: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, model, _ = pulled
    old = (model / SHARD1).read_bytes()
    v2 = make_test_repo(tmp_path / "v2", shards=3, shard_size=SHARD, seed=2)
    hub.publish(REPO, v2)
    new_lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(Fault("corrupt", SHARD1, times=-1))
    assert pull(write_plan(new_lock, hub.url, model)) == 1
    err = capsys.readouterr().err
    assert f"wrong bytes from the hub for {SHARD1}: expected sha256:" in err
    assert (model / SHARD1).read_bytes() == old
    assert not list(model.rglob("*.partial"))
    assert (model / "model-00002-of-00003.safetensors").read_bytes() == (
        v2 / "model-00002-of-00003.safetensors"
    ).read_bytes()


def test_killed_mid_file_resumes_and_transfers_less(
    hub: HubStandin, tmp_path: Path, source: Path
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    model = tmp_path / "m"
    plan = write_plan(lock, hub.url, model)
    hub.set_faults(rate_bps=4 * 2**20)
    proc = subprocess.Popen([sys.executable, str(HELPER), "--plan", plan],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    partial = model / (SHARD1 + ".partial")
    wait_until(
        lambda: (proc.poll(), partial.stat().st_size if partial.exists() else 0),
        lambda seen: seen[0] is not None or seen[1] > 2**20,
        f"more than 1 MiB in {partial.name}",
        step=0.02,
    )
    assert proc.poll() is None, "the pull ended before it could be killed mid-file"
    os.kill(proc.pid, signal.SIGKILL)  # the process this test started
    proc.wait()
    assert not (model / SHARD1).exists()
    # The killed pull's requests are logged when the hub notices their connections closed;
    # counting before that would charge them to the resumed pull (seen on a loaded machine).
    wait_until(lambda: hub.server.open_connections, lambda n: n == 0, "the hub to close "
               "the killed pull's connections", step=0.05)  # fmt: skip
    before = len(read_access_log(hub.access_log or Path()))
    hub.set_faults()
    assert pull(plan) == 0
    assert same_tree(model, source)
    second = [e for e in read_access_log(hub.access_log or Path())[before:] if e.bytes > 1000]
    assert sum(e.bytes for e in second) < lock.total_size
    assert any(e.range and e.path.partition("?")[0].endswith(SHARD1) for e in second)


def test_disk_preflight_refuses_before_the_first_byte(
    hub: HubStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    assert pull(write_plan(lock, hub.url, tmp_path / "m", margin=2**60)) == 3
    assert "not enough disk" in capsys.readouterr().err
    assert file_gets(hub) == []


def test_files_not_in_the_lock_reported_then_pruned(
    pulled: tuple[ModelLock, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, model, plan = pulled
    (model / "stale").mkdir()
    (model / "stale" / "old.bin").write_bytes(b"old")
    assert pull(plan) == 0
    assert (
        "not in the lock: stale/old.bin (model_prune: true removes it)" in capsys.readouterr().err
    )
    assert pull(plan, prune=True) == 0
    assert not (model / "stale" / "old.bin").exists()
    assert (model / META_DIR / "plan.json").exists()


def test_token_comes_from_a_file_and_stays_off_the_cdn(tmp_path: Path, source: Path) -> None:
    token = "hf_standin_secret_123"
    with HubStandin(tmp_path / "hub", token=token) as hub:
        hub.publish(REPO, source)
        with pytest.raises(HubError, match="HTTP 401") as refused:
            fetch_lock("huggingface", hub.url, REPO, "main")
        assert token not in str(refused.value)
        lock = fetch_lock("huggingface", hub.url, REPO, "main", Secret(token, "test"))
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        plan = write_plan(lock, hub.url, tmp_path / "m", token_file=str(token_file))
        assert token not in Path(plan).read_text()
        assert pull(plan) == 0
        assert hub.state.cdn_auth_seen == []  # not forwarded across the redirect
        assert same_tree(tmp_path / "m", source)


def test_stored_lock_needs_no_hub(tmp_path: Path, hub: HubStandin) -> None:
    hub_client._cache.clear()
    lock, origin = obtain_lock(tmp_path / "locks", "huggingface", hub.url, REPO, "main", None)
    assert "written to" in origin
    hub_client._cache.clear()
    again, origin = obtain_lock(
        tmp_path / "locks", "huggingface", "http://127.0.0.1:9", REPO, "main", None
    )
    assert again == lock and origin.startswith("stored lock")
    hub_client._cache.clear()
    with pytest.raises(HubError, match=r"python -m autoglm_infra\.stages\.model\.hub_client"):
        obtain_lock(tmp_path / "locks", "huggingface", "http://127.0.0.1:9", REPO, "v9", None)
    hub_client._cache.clear()


def test_modelscope_api_end_to_end(hub: HubStandin, tmp_path: Path, source: Path) -> None:
    lock = fetch_lock("modelscope", hub.url, REPO, "main")
    assert {f.digest.split(":")[0] for f in lock.files} == {"sha256"}
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    assert same_tree(tmp_path / "m", source)


# -- the write/hash pipeline (Sink) ------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_unaligned_drops_resume_exactly_with_and_without_o_direct(
    hub: HubStandin,
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    direct: bool,
) -> None:
    monkeypatch.setattr(model_fetch, "DIRECT_IO", direct)
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    hub.set_faults(Fault("drop", SHARD1, times=2, after_bytes=1_000_001))  # not 4096-aligned
    assert pull(write_plan(lock, hub.url, tmp_path / "m")) == 0
    assert same_tree(tmp_path / "m", source)
    shard_gets = [e for e in file_gets(hub) if e.path.endswith(SHARD1)]
    assert [e.range for e in shard_gets] == [None, "bytes=1000001-", "bytes=2000002-"]
    assert sum(e.bytes for e in shard_gets) == SHARD


@pytest.mark.parametrize("start", [0, 4096, 777])
@pytest.mark.parametrize("sizes", [[2**20, 2**20, 12345], [5000, 2**20], [2**20]])
def test_sink_writes_and_hashes_exactly_what_was_submitted(
    tmp_path: Path, start: int, sizes: list[int]
) -> None:
    import hashlib

    head = os.urandom(start)
    partial = tmp_path / "f.partial"
    partial.write_bytes(head)
    hasher = hashlib.sha256(head)
    sink = model_fetch.Sink(str(partial), start, hasher, depth=2)
    body = b""
    for size in sizes:
        data = os.urandom(size)
        buf = sink.buffer()
        buf[:size] = data
        sink.submit(buf, size)
        body += data
    assert sink.close() is None
    assert partial.read_bytes() == head + body
    assert sink.offset == start + len(body)
    assert hasher.hexdigest() == hashlib.sha256(head + body).hexdigest()


def test_disk_full_mid_file_names_the_space_and_removes_the_partial(
    hub: HubStandin,
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    model = tmp_path / "m"
    plan = write_plan(lock, hub.url, model)
    real_write = model_fetch.Sink._write

    def disk_full_after_1mib(self: model_fetch.Sink, buf: object, n: int) -> None:
        if self.offset >= 2**20:
            raise OSError(28, "No space left on device")
        real_write(self, buf, n)  # type: ignore[arg-type]

    monkeypatch.setattr(model_fetch.Sink, "_write", disk_full_after_1mib)
    assert pull(plan) == 3  # issue 20: a full disk is a clear error, temp files removed
    err = capsys.readouterr().err
    assert f"no space left on device at {model} while writing {SHARD1}" in err
    assert "the pull still needs" in err and "MiB are free" in err
    assert not list(model.rglob("*.partial"))
    assert not (model / SHARD1).exists()
    monkeypatch.undo()
    assert pull(plan) == 0
    assert same_tree(model, source)


def deep_check(plan: str) -> ModelContents:
    """The doctor's deep mode as it runs on a host: its script, through a real shell."""
    script = contents_script(HELPER.read_text(encoding="utf-8"), plan)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return ModelContentsFact().process(done.stdout.splitlines())


def tree_state(model: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in model.rglob("*") if p.is_file()}


def test_doctor_deep_mode_finds_bit_rot_that_stamps_miss_and_changes_nothing(
    pulled: tuple[ModelLock, Path, str],
) -> None:
    lock, model, plan = pulled
    clean = model_contents_check(deep_check(plan), str(model))
    assert clean.status == "ok" and f"re-hashed all {len(lock.files)} files" in clean.evidence
    shard = model / "model-00002-of-00003.safetensors"
    st = shard.stat()
    with shard.open("r+b") as fh:  # same size, mtime put back, same inode
        fh.seek(4242)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    (model / "config.json").unlink()
    assert controller_view(lock, model) == ["config.json"]  # the stamp misses the shard
    before = tree_state(model)
    found = model_contents_check(deep_check(plan), str(model))
    assert found.status == "fail"
    assert f"bytes differ from the lock: {shard.name}" in found.evidence
    assert "missing: config.json" in found.evidence
    assert "model_verify=full" in found.fix
    assert tree_state(model) == before  # read-only: no stamp, no lock file, no fetch


def test_doctor_deep_mode_without_a_plan_or_with_a_broken_helper(tmp_path: Path) -> None:
    assert model_contents_check(deep_check(str(tmp_path / "plan.json")), "/m").status == "warn"
    silent = parse_contents(["Traceback (most recent call last):", "boom"])
    broken = model_contents_check(silent, "/m")
    assert broken.status == "fail" and "did not report" in broken.evidence
