"""A lost controller never leaves a host the next run trips over (issue 20).

One host goes through the scenarios in order: the controller SIGKILLed inside the venv
build (while a second controller finds the host taken), the re-run that must succeed and
the one after that must change nothing; then the same for the model download at a
second kill point; two model converges started together (one waits for the other); a
disk that fills up in the middle of a pull, then in the middle of a venv build. The venv
build is the slow step: it runs once (plus the rebuild after the kill). A second, fresh
host runs the complete deploy and is killed at a random operation of its first converge
(the seed is in every failure message), then inside the unit start.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stages.python_env import venv as pe
from autoglm_testbed.converge import (
    ConvergeResult,
    describe_failure,
    pyinfra_bin,
    run_pyinfra,
)
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.hub_standin import HubStandin, make_test_repo
from autoglm_testbed.pypi_mirror import PypiMirror
from autoglm_testbed.waiting import wait_until
from autoglm_testbed.world import controller_address

ROOT = Path(__file__).resolve().parents[2]
VENV = "/opt/autoglm/venv"
REPO = "test-org/Tiny-Model"
MODEL_DIR = "/srv/autoglm/models/tiny"
SHARD = 4 * 2**20
HOLDER = "/run/lock/autoglm-converge.holder"
UNIT = "autoglm-serve.service"
STARTED = "Starting operation:"
# how each stage of a venv host's complete converge names its operations, in order
VENV_HOST_STAGES = ("network:", "NVIDIA:", "Python env:", "Model:", "Service:")
# the stages after them, with no change to make on a venv host without serve_expose
LAST_STAGES = ("Expose:", "Verify:")
SITE_TORCH = f"ls -d {pe.builds_dir(VENV)}/*/lib/python3*/site-packages/torch 2>/dev/null || true"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_repo(tmp_path_factory.mktemp("src") / "repo", shards=3, shard_size=SHARD)


@pytest.fixture(scope="module")
def hub(
    sandbox: Sandbox, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubStandin]:
    sandbox._ensure_network()
    with HubStandin(tmp_path_factory.mktemp("hub"), controller_address(sandbox)) as h:
        h.publish(REPO, source)
        yield h


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    mirror: PypiMirror,
    hub: HubStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    (host,) = sandbox_hosts(1)
    data: dict[str, object] = {
        "pip_index_url": mirror.index_url,
        "python_torch_index_url": None,
        "nvidia_require_gpu": False,
        "serve_engine": "cpu",
        "model_repo": REPO,
        "model_dir": MODEL_DIR,
        "hub_endpoint": hub.url,
        "model_lock_dir": str(tmp_path_factory.mktemp("locks")),
        "model_download_workers": 2,
        "model_disk_margin_mib": 1,
        "model_retry_max_delay": 2,
    }
    inventory = tmp_path_factory.mktemp("interrupted") / "inventory.py"
    write_inventory(inventory, [host], {}, data)
    return host, inventory


class Controller:
    """A `pyinfra ... -y --json` run in the background, as a user's terminal runs it."""

    def __init__(self, inventory: Path, deploy: str, work: Path, *extra: str) -> None:
        stem = f"{deploy.replace('/', '_')}.{id(self)}"
        self.out, self.err = work / f"{stem}.json", work / f"{stem}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [pyinfra_bin(), str(inventory), deploy, "-y", "--json", *extra],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the SSH connection drops as when a laptop sleeps; nothing is cleaned up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout=timeout)


def remote(host: SandboxHost, command: str) -> str:
    return host.ssh(command, check=False).stdout.strip()


def wait_for_remote(host: SandboxHost, command: str, what: str, controller: Controller) -> str:
    """Poll `command` on the host until it prints something; fail early if the run ended."""

    def probe() -> str:
        if controller.proc.poll() is not None:
            raise AssertionError(
                f"the converge ended (rc {controller.proc.returncode}) before {what}:\n"
                + controller.stderr()[-3000:]
            )
        return remote(host, command)

    return wait_until(probe, bool, what, timeout=600, step=0.3)


def converge_ok(inventory: Path, deploy: str, *extra: str) -> ConvergeResult:
    result = run_pyinfra(inventory, deploy, *extra)
    assert result.returncode == 0, describe_failure(result)
    assert "Traceback" not in result.stderr
    return result


def no_process(host: SandboxHost, pattern: str, what: str, timeout: float = 60) -> None:
    wait_until(
        lambda: remote(host, f"pgrep -a -f {pattern!r} | grep -v pgrep || true"),
        lambda seen: seen == "",
        f"no {what} left running on the host",
        timeout=timeout,
    )


def test_controller_killed_inside_the_venv_build_and_a_second_controller(
    world: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    host, inventory = world
    first = Controller(inventory, "deploys/python_env.py", tmp_path)
    try:
        # pip extracting wheels into the new build: the point the orphan collided at
        wait_for_remote(host, SITE_TORCH, "pip installing torch into the build", first)
        # a second operator converging the same host is stopped, naming who holds it
        other = run_pyinfra(inventory, "deploys/python_env.py", "--data", "converge_lock_wait=1")
        assert other.returncode != 0
        for text in ("is being converged by", socket.gethostname(), "converge_lock_wait"):
            assert text in other.stderr, other.stderr[-3000:]
        assert "Traceback" not in other.stderr
    finally:
        first.kill()
    # remote work dies with its controller: no pip outlives it, nothing it did is promoted
    no_process(host, "pip install", "pip of the killed run", timeout=30)
    assert remote(host, f"readlink {VENV} || true") == "", "the killed run's build was swapped in"
    rerun = converge_ok(inventory, "deploys/python_env.py")
    assert any("venv from lock cpu" in c for c in rerun.changed()), rerun.changed()
    assert remote(host, f"{VENV}/bin/python -c 'import torch, transformers; print(1)'") == "1"
    assert converge_ok(inventory, "deploys/python_env.py").changed() == []
    builds = remote(host, f"ls {pe.builds_dir(VENV)}").split()
    assert builds == [remote(host, f"readlink {VENV}").rsplit("/", 1)[1]], builds


def host_digests(host: SandboxHost) -> dict[str, str]:
    out = remote(host, f"cd {MODEL_DIR} && find . -path ./.autoglm -prune -o -type f -print0 "
                       "| xargs -0 sha256sum")  # fmt: skip
    return {line[66:].removeprefix("./"): line[:64] for line in out.splitlines()}


def source_digests(source: Path) -> dict[str, str]:
    return {
        p.relative_to(source).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in source.rglob("*")
        if p.is_file()
    }


def test_controller_killed_inside_the_model_download_resumes(
    world: tuple[SandboxHost, Path], hub: HubStandin, source: Path, tmp_path: Path
) -> None:
    host, inventory = world
    hub.set_faults(rate_bps=2**20)  # a pull that is still running when the kill comes
    try:
        first = Controller(inventory, "deploys/model.py", tmp_path)
        try:
            wait_for_remote(
                host,
                f"find {MODEL_DIR} -name '*.partial' -size +100k 2>/dev/null | head -1",
                "a shard half downloaded",
                first,
            )
        finally:
            first.kill()
    finally:
        hub.set_faults()
    rerun = converge_ok(inventory, "deploys/model.py")
    assert rerun.changed()
    assert host_digests(host) == source_digests(source)
    no_process(host, "model_fetch.py", "model download of the killed run")
    assert converge_ok(inventory, "deploys/model.py").changed() == []


def test_two_converges_at_once_the_second_waits(
    world: tuple[SandboxHost, Path], hub: HubStandin, source: Path, tmp_path: Path
) -> None:
    host, inventory = world
    host.ssh(f"rm -f {MODEL_DIR}/*.safetensors")
    hub.set_faults(rate_bps=4 * 2**20)
    try:
        first = Controller(inventory, "deploys/model.py", tmp_path)
        wait_for_remote(host, f"cat {HOLDER} 2>/dev/null || true", "the first run's lock", first)
        second = run_pyinfra(inventory, "deploys/model.py", "-v")
        assert first.wait() == 0, first.stderr()[-3000:]
    finally:
        hub.set_faults()
    assert second.returncode == 0, describe_failure(second)
    assert "waiting up to" in second.stderr, second.stderr[-3000:]
    assert second.changed() == []  # it read the host after the first run had finished
    assert host_digests(host) == source_digests(source)


def test_disk_full_in_the_middle_of_a_pull_is_a_clear_error(
    world: tuple[SandboxHost, Path], hub: HubStandin, source: Path, tmp_path: Path
) -> None:
    host, inventory = world
    small = "/mnt/small"
    host.ssh(f"mkdir -p {small} && mount -t tmpfs -o size=16m tmpfs {small}")
    inventory_small = tmp_path / "inventory.py"
    text = inventory.read_text().replace(MODEL_DIR, f"{small}/model")
    inventory_small.write_text(text)
    hub.set_faults(rate_bps=2 * 2**20)
    try:
        pull = Controller(inventory_small, "deploys/model.py", tmp_path)
        wait_for_remote(
            host, f"find {small} -name '*.partial' -size +100k | head -1", "a pull under way", pull
        )
        # someone else fills the disk while the pull runs
        host.ssh(f"fallocate -l $(( $(stat -f -c '%a*%S' {small}) - 65536 )) {small}/filler")
        assert pull.wait() != 0
    finally:
        hub.set_faults()
    err = pull.stderr()
    assert "No space left" in err or "no space left" in err, err[-3000:]
    assert f"{small}/model" in err and "MiB" in err, err[-3000:]
    assert "Traceback" not in err
    assert remote(host, f"find {small}/model -name '*.partial'") == ""
    host.ssh(f"rm -f {small}/filler")
    converge_ok(inventory_small, "deploys/model.py")
    host.ssh(f"umount {small}")


def test_disk_full_in_the_middle_of_a_venv_build_keeps_the_venv_in_service(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    in_service = remote(host, f"readlink {VENV}")
    assert in_service, "the venv scenario above leaves a venv in service"
    # another interpreter path is another build (its digest names the interpreter); that
    # build's directory gets a small filesystem of its own, so pip fills it mid-install
    interpreter = "/usr/bin/python3.11"
    digest = pe.build_digest(pe.load_lock("cpu", DEFAULT_LOCKS_DIR), interpreter)
    new = pe.next_build_path(VENV, digest, in_service)
    host.ssh(f"mkdir -p {new} && mount -t tmpfs -o size=64m tmpfs {new}")
    try:
        result = run_pyinfra(
            inventory, "deploys/python_env.py", "--data", f"python_interpreter={interpreter}"
        )
        assert result.returncode != 0
        err = result.stderr
        assert f"no space left on device at {pe.builds_dir(VENV)}" in err, err[-3000:]
        assert "MiB free" in err and "needs about as much as the venv in service" in err
        assert f"{VENV} still serves the previous venv" in err
        assert "Traceback" not in err
        assert remote(host, f"ls -A {new}") == "", "the failed build's files were left behind"
    finally:
        host.ssh(f"umount {new} && rmdir {new}")
    assert remote(host, f"readlink {VENV}") == in_service
    assert remote(host, f"{VENV}/bin/python -c 'import torch; print(1)'") == "1"
    assert converge_ok(inventory, "deploys/python_env.py").changed() == []


def started_operations(controller: Controller) -> list[str]:
    return [ln.split(STARTED, 1)[1].strip() for ln in controller.stderr().splitlines()
            if STARTED in ln]  # fmt: skip


def test_first_complete_converge_killed_at_a_random_operation_then_at_the_unit_start(
    full_world_host: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    host, inventory = full_world_host
    # the kill point varies from run to run (AUTOGLM_KILL_SEED=<seed> replays one): a stage
    # of the venv host's converge, and up to 2 s after its first operation started
    seed = int(os.environ.get("AUTOGLM_KILL_SEED") or secrets.randbelow(10**6))
    rng = random.Random(seed)
    stage, after = rng.choice(VENV_HOST_STAGES), rng.uniform(0, 2)
    first = Controller(inventory, "deploys/full.py", tmp_path)
    wait_until(
        lambda: (first.proc.poll(), started_operations(first)),
        lambda seen: seen[0] is not None or any(op.startswith(stage) for op in seen[1]),
        f"the first operation of stage {stage!r} (seed {seed})",
        timeout=900,
        step=0.05,
    )
    # the kill comes `after` s later, or as the read-only tail (expose, verify: about a
    # second in all) starts, so it always lands while the converge still runs (CI once
    # drew 'Verify:' plus 1.9 s, and the converge had ended by then)
    deadline = time.monotonic() + after
    while first.proc.poll() is None and time.monotonic() < deadline:
        if any(op.startswith(LAST_STAGES) for op in started_operations(first)):
            break
        time.sleep(0.05)
    first.kill()
    ops = started_operations(first)
    assert first.proc.returncode == -signal.SIGKILL, (
        f"seed {seed}: the first converge ended (rc {first.proc.returncode}) after "
        f"{len(ops)} operations, before the kill in stage {stage!r}:\n" + first.stderr()[-2000:]
    )
    where = f"seed {seed}: killed {after:.1f} s into operation {len(ops)} ({ops[-1]})"
    print(where)  # pytest -s or -rP shows the kill point of a passing run
    rerun = run_pyinfra(inventory, "deploys/full.py")
    assert rerun.returncode == 0, f"{where}\n{describe_failure(rerun)}"
    assert "Traceback" not in rerun.stderr, where
    again = converge_ok(inventory, "deploys/full.py")
    assert again.changed() == [], f"{where}: {again.changed()}"

    # the unit start: the service stage is killed once it has started the unit
    host.ssh(f"systemctl stop {UNIT}; rm -f /etc/systemd/system/{UNIT}; systemctl daemon-reload")
    second = Controller(inventory, "deploys/full.py", tmp_path)
    try:
        wait_for_remote(
            host,
            f"systemctl is-active {UNIT} | grep -E '^(activating|active)$' || true",
            "the service stage starting the unit",
            second,
        )
    finally:
        second.kill()
    converge_ok(inventory, "deploys/full.py")  # whatever the killed run left, this finishes it
    assert converge_ok(inventory, "deploys/full.py").changed() == []
    assert remote(host, f"systemctl is-active {UNIT}") == "active"
