"""The model stage on a real sandbox host, pulling from the hub stand-in on the bridge.

One host is converged through the scenarios in order (fresh pull, no-op re-run, corrupted
shard, interrupted pull, wrong bytes on a lock update); a second, untouched host checks the
disk refusal and the air-gapped path (stored lock, a static mirror with no API).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoglm_infra.stages.model.hub_client import fetch_lock
from autoglm_infra.stages.model.lock import ModelLock, lock_file_path, read_lock, write_lock
from autoglm_testbed.converge import converge_twice, describe_failure, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.hub_standin import Fault, HubStandin, make_test_repo
from autoglm_testbed.static_http import make_server, read_access_log, serve_in_thread
from autoglm_testbed.world import controller_address

REPO = "test-org/Tiny-Model"
MODEL_DIR = "/srv/autoglm/models/tiny"
SHARD = 2 * 2**20
SHARD1 = "model-00001-of-00003.safetensors"
DEPLOY = "deploys/model.py"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_repo(tmp_path_factory.mktemp("src") / "repo", shards=3, shard_size=SHARD)


@pytest.fixture(scope="module")
def hub(
    sandbox: Sandbox, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubStandin]:
    sandbox._ensure_network()  # the bridge address the stand-in binds to
    work = tmp_path_factory.mktemp("hub")
    with HubStandin(work / "hub", controller_address(sandbox), access_log=work / "access.log") as h:
        h.publish(REPO, source)
        yield h


@pytest.fixture(scope="module")
def lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("locks")


def group_data(hub_url: str, lock_dir: Path) -> dict[str, object]:
    return {
        "model_repo": REPO,
        "model_dir": MODEL_DIR,
        "hub_endpoint": hub_url,
        "model_lock_dir": str(lock_dir),
        "model_download_workers": 2,
        "model_disk_margin_mib": 1,
        "model_retry_max_delay": 2,
    }


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    hub: HubStandin,
    lock_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    (host,) = sandbox_hosts(1)
    inventory = tmp_path_factory.mktemp("model") / "inventory.py"
    write_inventory(inventory, [host], {}, group_data(hub.url, lock_dir))
    return host, inventory


def host_digests(host: SandboxHost) -> dict[str, str]:
    out = host.ssh(f"cd {MODEL_DIR} && find . -path ./.autoglm -prune -o -type f -print0 "
                   "| xargs -0 sha256sum").stdout  # fmt: skip
    return {line[66:].removeprefix("./"): line[:64] for line in out.splitlines()}


def source_digests(source: Path) -> dict[str, str]:
    return {
        p.relative_to(source).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in source.rglob("*")
        if p.is_file()
    }


def the_lock(lock_dir: Path) -> ModelLock:
    return read_lock(lock_file_path(lock_dir, "huggingface", REPO, "main"))


def log_size(hub: HubStandin) -> int:
    return len(read_access_log(hub.access_log or Path()))


def test_fresh_pull_and_noop_rerun_costs_one_stat_only_command(
    world: tuple[SandboxHost, Path], hub: HubStandin, source: Path, lock_dir: Path
) -> None:
    host, inventory = world
    first, _ = converge_twice(inventory, DEPLOY)
    assert first.changed()
    assert host_digests(host) == source_digests(source)
    assert host.ssh(f"ls {MODEL_DIR} | grep -c partial || true").stdout.strip() == "0"
    assert the_lock(lock_dir).total_size == sum(p.stat().st_size for p in source.rglob("*.*"))
    before = log_size(hub)
    third = run_pyinfra(inventory, DEPLOY, debug=True)
    assert third.returncode == 0 and third.changed() == [], describe_failure(third)
    # host profile + the model snapshot; no hub request, no helper, no hashing of weights
    assert third.remote_commands() == 2, third.stderr[-3000:]
    assert "model_fetch.py --plan" not in third.stderr
    assert log_size(hub) == before


def test_corrupted_shard_is_replaced(world: tuple[SandboxHost, Path], source: Path) -> None:
    host, inventory = world
    shard = f"{MODEL_DIR}/model-00002-of-00003.safetensors"
    # bit rot: same size, mtime put back; only model_verify=full can see it
    host.ssh(f"m=$(stat -c %y {shard}); printf 'XXXX' | dd of={shard} bs=1 seek=1000 "
             f"conv=notrunc status=none; touch -d \"$m\" {shard}")  # fmt: skip
    stamp_run = run_pyinfra(inventory, DEPLOY)
    assert stamp_run.returncode == 0 and stamp_run.changed() == []
    full = run_pyinfra(inventory, DEPLOY, "--data", "model_verify=full")
    assert full.returncode == 0, describe_failure(full)
    assert host_digests(host) == source_digests(source)
    # an ordinary corruption (mtime moves) is caught by the default stamp check
    host.ssh(f"printf 'XXXX' | dd of={MODEL_DIR}/{SHARD1} bs=1 seek=7 conv=notrunc status=none")
    fixed = run_pyinfra(inventory, DEPLOY)
    assert fixed.returncode == 0 and fixed.changed(), describe_failure(fixed)
    assert host_digests(host) == source_digests(source)


def test_interrupted_pull_resumes_with_fewer_bytes(
    world: tuple[SandboxHost, Path], hub: HubStandin, source: Path
) -> None:
    host, inventory = world
    host.ssh(f"rm -f {MODEL_DIR}/{SHARD1}")
    hub.set_faults(Fault("drop", SHARD1, times=-1, after_bytes=2**20))
    failed = run_pyinfra(inventory, DEPLOY, "--data", "model_download_attempts=1")
    assert failed.returncode != 0
    assert "gave up after 1 tries" in failed.stderr, failed.stderr[-2000:]
    assert host.ssh(f"stat -c %s {MODEL_DIR}/{SHARD1}.partial").stdout.strip() == str(2**20)
    hub.set_faults()
    before = log_size(hub)
    resumed = run_pyinfra(inventory, DEPLOY)
    assert resumed.returncode == 0, describe_failure(resumed)
    entries = [e for e in read_access_log(hub.access_log or Path())[before:] if e.bytes > 512]
    assert [e.range for e in entries] == [f"bytes={2**20}-"]
    assert sum(e.bytes for e in entries) == SHARD - 2**20
    assert host_digests(host) == source_digests(source)


def test_rate_limited_redirected_pull_waits_for_the_window(
    world: tuple[SandboxHost, Path], hub: HubStandin, source: Path
) -> None:
    host, inventory = world
    host.ssh(f"rm -f {MODEL_DIR}/{SHARD1}")
    hub.state.cdn_redirect_status = 308
    hub.set_faults(Fault("status", SHARD1, times=1, status=429, ratelimit_reset=1))
    before = log_size(hub)
    try:
        result = run_pyinfra(inventory, DEPLOY)
    finally:
        hub.state.cdn_redirect_status = 302
        hub.set_faults()
    assert result.returncode == 0, describe_failure(result)
    entries = [e for e in read_access_log(hub.access_log or Path())[before:] if SHARD1 in e.path]
    assert [e.status for e in entries] == [429, 308, 200], entries
    assert entries[1].ts - entries[0].ts >= 1.9  # RateLimit t=1 waited out, not backed off
    assert host_digests(host) == source_digests(source)


def test_wrong_bytes_on_lock_update_keep_the_old_file(
    world: tuple[SandboxHost, Path], hub: HubStandin, source: Path, tmp_path: Path
) -> None:
    host, inventory = world
    old = host_digests(host)
    v2 = make_test_repo(tmp_path / "v2", shards=3, shard_size=SHARD, seed=2)
    hub.publish(REPO, v2)
    try:
        hub.set_faults(Fault("corrupt", SHARD1, times=-1))
        bad = run_pyinfra(inventory, DEPLOY, "--data", "model_lock_update=true")
        assert bad.returncode != 0
        assert f"wrong bytes from the hub for {SHARD1}" in bad.stderr, bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr
        assert host_digests(host)[SHARD1] == old[SHARD1]
        hub.set_faults()
        good = run_pyinfra(inventory, DEPLOY)  # the stored lock is now v2's
        assert good.returncode == 0, describe_failure(good)
        assert host_digests(host) == source_digests(v2)
    finally:
        hub.set_faults()
        hub.publish(REPO, source)


def test_small_disk_refused_before_anything_changes(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    hub: HubStandin,
    lock_dir: Path,
    tmp_path: Path,
) -> None:
    (host,) = sandbox_hosts(1)
    host.ssh("mkdir -p /mnt/small && mount -t tmpfs -o size=4m tmpfs /mnt/small")
    inventory = tmp_path / "inventory.py"
    data = {**group_data(hub.url, lock_dir), "model_dir": "/mnt/small/model"}
    write_inventory(inventory, [host], {}, data)
    result = run_pyinfra(inventory, DEPLOY)
    assert result.returncode != 0
    assert "not enough disk for the model at /mnt/small/model" in result.stderr
    assert "nothing was changed" in result.stderr and "Traceback" not in result.stderr
    assert (
        host.ssh("ls /usr/local/lib/autoglm /mnt/small/model 2>&1 || true").stdout.count(
            "No such file"
        )
        == 2
    )


def test_air_gapped_host_converges_from_stored_lock_and_static_mirror(
    sandbox: Sandbox,
    sandbox_hosts: Callable[..., list[SandboxHost]],
    hub: HubStandin,
    lock_dir: Path,
    source: Path,
    tmp_path: Path,
) -> None:
    (host,) = sandbox_hosts(1)
    locks = tmp_path / "committed-locks"  # as a user commits it; the hub is never asked
    lock = fetch_lock("huggingface", hub.url, REPO, "main")
    write_lock(lock_file_path(locks, "huggingface", REPO, "main"), lock)
    # a plain file server laid out like /{repo}/resolve/{commit}/{path}: no API at all
    tree = tmp_path / "mirror" / REPO / "resolve" / lock.commit
    shutil.copytree(source, tree)
    mirror = make_server(tmp_path / "mirror", controller_address(sandbox),
                         access_log=tmp_path / "mirror.log")  # fmt: skip
    with serve_in_thread(mirror):
        inventory = tmp_path / "inventory.py"
        url = f"http://{controller_address(sandbox)}:{mirror.port}"
        write_inventory(inventory, [host], {}, group_data(url, locks))
        first, _ = converge_twice(inventory, DEPLOY)
        assert first.changed()
    assert host_digests(host) == source_digests(source)
    paths = [e.path for e in read_access_log(tmp_path / "mirror.log")]
    assert paths and not any("/api/" in p for p in paths)


def test_hub_token_reaches_the_host_only_as_a_private_file(
    sandbox: Sandbox,
    sandbox_hosts: Callable[..., list[SandboxHost]],
    source: Path,
    tmp_path: Path,
) -> None:
    (host,) = sandbox_hosts(1)
    token = "hf_sandbox_secret_9c1f"
    with HubStandin(tmp_path / "hub", controller_address(sandbox), token=token) as private:
        private.publish(REPO, source)
        inventory = tmp_path / "inventory.py"
        data = {**group_data(private.url, tmp_path / "locks"), "hub_token_env": "TEST_HUB_TOKEN"}
        write_inventory(inventory, [host], {}, data)
        refused = run_pyinfra(inventory, DEPLOY, env={"TEST_HUB_TOKEN": ""})
        assert refused.returncode != 0 and "TEST_HUB_TOKEN is set but empty" in refused.stderr
        # not huggingface.co: a mirror, which gets no token unless the user opts in
        withheld = run_pyinfra(inventory, DEPLOY, env={"TEST_HUB_TOKEN": token})
        assert withheld.returncode != 0
        assert f"is not sent to {private.url}" in withheld.stderr, withheld.stderr[-2000:]
        assert "HTTP 401 RepoNotFound" in withheld.stderr and "Traceback" not in withheld.stderr
        assert private.seen() and not any(s.token for s in private.seen())
        result = run_pyinfra(inventory, DEPLOY, "-vvv", "--data", "hub_token_to_mirror=true",
                             env={"TEST_HUB_TOKEN": token})  # fmt: skip
        assert result.returncode == 0, describe_failure(result)
        assert private.state.cdn_auth_seen == [] and private.seen("cdn")
    assert token not in result.stderr + json.dumps(result.report)
    assert token not in inventory.read_text()
    mode = host.ssh("stat -c '%a %U' /etc/autoglm/model-hub-token").stdout.strip()
    assert mode == "600 root"
    assert host.ssh(f"grep -rl {token} {MODEL_DIR}/.autoglm || true").stdout.strip() == ""
    assert host_digests(host) == source_digests(source)
