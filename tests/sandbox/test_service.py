"""The model service for real: python env -> model -> service on one sandbox host.

The CPU profile is installed from a loopback PyPI-style index, the tiny model is pulled
from the hub stand-in, and `transformers serve` runs under the hardened unit with real
systemd. Scenarios run in order on the one host: healthy endpoint and idempotence, the
key's secrecy, restart on key/unit change, kill -9 recovery, and a broken configuration
that crash-loops into `failed` and fails the converge.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_testbed.converge import (
    ConvergeResult,
    converge_twice,
    describe_failure,
    run_pyinfra,
)
from autoglm_testbed.hosts import SandboxHost, write_inventory
from autoglm_testbed.hub_standin import HubStandin
from autoglm_testbed.pypi_mirror import PypiMirror
from autoglm_testbed.tiny_model import write_tiny_model
from autoglm_testbed.waiting import unit_properties, wait_until

STAGES = ("deploys/python_env.py", "deploys/model.py", "deploys/service.py")
SERVICE = "deploys/service.py"
UNIT = "autoglm-serve.service"
REPO = "test-org/AutoGLM-Tiny"
MODEL_NAME = "autoglm-tiny"
MODEL_DIR = "/srv/autoglm/models/tiny"
PORT = 8000
RESTART_SEC = 3
BURST = 3
KEY = "svc-key-Zq8rT2wLx9"
NEW_KEY = "svc-key-Hn4vB7cKm1"


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    mirror: PypiMirror,
    tiny_hub: HubStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    (host,) = sandbox_hosts(1)
    work = tmp_path_factory.mktemp("service")
    data: dict[str, object] = {
        "nvidia_require_gpu": False,
        "pip_index_url": mirror.index_url,
        "python_torch_index_url": None,  # the mirror holds torch+cpu too
        "model_repo": REPO,
        "model_dir": MODEL_DIR,
        "hub_endpoint": tiny_hub.url,
        "model_lock_dir": str(work / "locks"),
        "serve_engine": "cpu",
        "service_restart_sec": RESTART_SEC,
        "service_start_limit_burst": BURST,
        "service_start_limit_interval_sec": 600,
        "service_start_timeout_sec": 180,
    }
    inventory = work / "inventory.py"
    write_inventory(inventory, [host], {}, data)
    return host, inventory


def converge(
    inventory: Path, *args: str, key: str = KEY, deploy: str = STAGES[0]
) -> ConvergeResult:
    files = STAGES[1:] if deploy == STAGES[0] else ()
    return run_pyinfra(inventory, deploy, *files, *args, env={"AUTOGLM_API_KEY": key})


def http(host: SandboxHost, path: str, body: dict[str, object] | None = None) -> tuple[int, str]:
    """(status, body) of a request from the host itself to the loopback endpoint."""
    data = "None" if body is None else repr(json.dumps(body).encode())
    code = (
        "import urllib.request as u, urllib.error as e\n"
        f"r = u.Request('http://127.0.0.1:{PORT}{path}', data={data}, "
        "headers={'Content-Type': 'application/json'})\n"
        "try:\n    s = u.urlopen(r, timeout=60); print(s.status); print(s.read().decode())\n"
        "except e.HTTPError as x:\n    print(x.code); print(x.read().decode())\n"
    )
    out = host.ssh(f"python3 -c {shlex.quote(code)}", timeout=90).stdout
    status, _, text = out.partition("\n")
    return int(status), text


def unit_show(host: SandboxHost, *props: str) -> dict[str, str]:
    return unit_properties(host, UNIT, *props)


def test_converge_serves_health_models_and_chat(world: tuple[SandboxHost, Path]) -> None:
    host, inventory = world
    first = converge(inventory)
    assert first.returncode == 0, describe_failure(first)
    second = converge(inventory)
    assert second.returncode == 0, describe_failure(second)
    assert second.changed() == [], second.changed()
    assert unit_show(host, "ActiveState", "UnitFileState") == {
        "ActiveState": "active",
        "UnitFileState": "enabled",
    }
    assert http(host, "/health")[0] == 200
    status, models = http(host, "/v1/models")
    assert status == 200 and MODEL_NAME in [m["id"] for m in json.loads(models)["data"]]
    status, text = http(
        host,
        "/v1/chat/completions",
        {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
    )
    assert status == 200, text
    reply = json.loads(text)
    assert reply["usage"]["completion_tokens"] > 0 and reply["choices"][0]["message"]["content"]


def test_service_runs_unprivileged_and_sandboxed(world: tuple[SandboxHost, Path]) -> None:
    host, _ = world
    pid = unit_show(host, "MainPID")["MainPID"]
    assert host.ssh(f"ps -o user= -p {pid}").stdout.strip() == "autoglm"
    status = host.ssh(f"grep -E '^(NoNewPrivs|CapEff)' /proc/{pid}/status").stdout
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status
    exposure = host.ssh(f"systemd-analyze security {UNIT} --no-pager | tail -1").stdout
    assert float(re.findall(r"(\d+\.\d)", exposure)[0]) <= 1.5, exposure
    stat = host.ssh("stat -c '%a %U' /etc/autoglm/credentials /etc/autoglm/credentials/api-key")
    assert stat.stdout.split("\n")[:2] == ["700 root", "600 root"]


def test_key_is_in_no_argv_property_unit_journal_or_output(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    # -vvv output of a converge that uploads a changed key (then the original again)
    changed = converge(inventory, "-vvv", key=NEW_KEY)
    assert changed.returncode == 0, describe_failure(changed)
    assert host.ssh("cat /etc/autoglm/credentials/api-key").stdout.strip() == NEW_KEY
    back = converge(inventory, "-vvv")
    assert back.returncode == 0, describe_failure(back)
    for key in (KEY, NEW_KEY):
        for output in (changed.stderr, json.dumps(changed.report), back.stderr):
            assert key not in output
        assert key not in host.ssh("ps auxww").stdout
        assert key not in host.ssh(f"systemctl show {UNIT}").stdout
        assert key not in host.ssh(f"cat /etc/systemd/system/{UNIT}").stdout
        assert key not in host.ssh(f"journalctl -u {UNIT} --no-pager -o verbose").stdout


def test_key_change_restarts_and_unchanged_key_does_not(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    before = unit_show(host, "InvocationID")["InvocationID"]
    again = converge(inventory, deploy=SERVICE)
    assert again.returncode == 0 and again.changed() == [], describe_failure(again)
    assert unit_show(host, "InvocationID")["InvocationID"] == before
    changed = converge(inventory, deploy=SERVICE, key=NEW_KEY)
    assert changed.returncode == 0, describe_failure(changed)
    assert any("API key" in op for op in changed.changed()), changed.changed()
    assert unit_show(host, "InvocationID")["InvocationID"] != before
    assert http(host, "/health")[0] == 200
    restored = converge(inventory, deploy=SERVICE)
    assert restored.returncode == 0, describe_failure(restored)


def test_unit_change_reloads_and_restarts_once(
    world: tuple[SandboxHost, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, inventory = world
    monkeypatch.setenv("AUTOGLM_API_KEY", KEY)
    before = unit_show(host, "InvocationID")["InvocationID"]
    seed = ("--data", 'serve_extra_args=["--default-seed","7"]')
    first, _ = converge_twice(inventory, SERVICE, *seed)
    assert any(UNIT in op for op in first.changed()), first.changed()
    assert unit_show(host, "InvocationID")["InvocationID"] != before
    assert "--default-seed 7" in host.ssh(f"systemctl show -p ExecStart {UNIT}").stdout
    back = converge(inventory, deploy=SERVICE)
    assert back.returncode == 0, describe_failure(back)


def test_converge_while_the_service_starts_joins_that_start(
    world: tuple[SandboxHost, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converge right after boot (or while the engine loads) waits for the start under
    way instead of restarting it. A drop-in holds the start until the converge is inside
    `systemctl start`, so the unit is `activating` for certain when the converge reads it."""
    host, inventory = world
    monkeypatch.setenv("AUTOGLM_API_KEY", KEY)
    gate, drop_in = "/run/autoglm-test-go", f"/etc/systemd/system/{UNIT}.d/zz-hold-start.conf"
    host.ssh(
        f"rm -f {gate} && mkdir -p $(dirname {drop_in}) && printf '[Service]\\n"
        f"ExecStartPre=/bin/sh -c \\x27until [ -e {gate} ]; do sleep 0.2; done\\x27\\n' "
        f"> {drop_in} && systemctl daemon-reload && systemctl restart --no-block {UNIT}"
    )
    try:
        starting = wait_until(
            lambda: unit_show(host, "ActiveState", "InvocationID"),
            lambda u: u["ActiveState"] == "activating" and u["InvocationID"] != "",
            f"{UNIT} activating (held by the drop-in)",
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(run_pyinfra, inventory, SERVICE, env={"AUTOGLM_API_KEY": KEY})
            wait_until(
                lambda: host.ssh(f"pgrep -af 'systemctl (re)?start {UNIT}' || true").stdout,
                lambda out: f"start {UNIT}" in out or running.done(),
                "the converge to reach its systemctl (re)start",
            )
            host.ssh(f"touch {gate}")
            joined = running.result(timeout=900)
    finally:
        host.ssh(f"touch {gate}; rm -f {drop_in} && systemctl daemon-reload")
    assert joined.returncode == 0, describe_failure(joined)
    assert any(op.startswith("Service: run") for op in joined.changed()), joined.changed()
    after = unit_show(host, "ActiveState", "InvocationID")
    assert after == {"ActiveState": "active", "InvocationID": starting["InvocationID"]}, (
        "the start under way was restarted"
    )


def test_key_generated_once_on_host_when_controller_has_none(
    world: tuple[SandboxHost, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, inventory = world
    monkeypatch.delenv("AUTOGLM_API_KEY", raising=False)
    host.ssh("rm /etc/autoglm/credentials/api-key")
    first, second = converge_twice(inventory, SERVICE)
    assert any("generated once" in op for op in first.changed()), first.changed()
    key = host.ssh("cat /etc/autoglm/credentials/api-key").stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", key), "48 random alphanumerics"
    assert host.ssh("stat -c '%a %U' /etc/autoglm/credentials/api-key").stdout.strip() == "600 root"
    assert key not in first.stderr + second.stderr + json.dumps(first.report)
    assert unit_show(host, "ActiveState")["ActiveState"] == "active"
    restored = converge(inventory, deploy=SERVICE)  # the controller's key again
    assert restored.returncode == 0, describe_failure(restored)


def test_model_change_restarts_in_the_same_run(
    world: tuple[SandboxHost, Path],
    tiny_hub: HubStandin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model stage changes the weights at execution time; the service stage, queued
    after it, restarts in that same run and the next converge changes nothing."""
    host, inventory = world
    monkeypatch.setenv("AUTOGLM_API_KEY", KEY)
    write_tiny_model(tmp_path / "v2", seed=99)
    tiny_hub.publish(REPO, tmp_path / "v2", branch="v2")
    before = unit_show(host, "InvocationID")["InvocationID"]
    first, _ = converge_twice(inventory, STAGES[0], *STAGES[1:], "--data", "model_revision=v2")
    assert any(op.startswith("Service: run") for op in first.changed()), first.changed()
    assert unit_show(host, "InvocationID")["InvocationID"] != before
    assert http(host, "/health")[0] == 200
    back = converge(inventory)
    assert back.returncode == 0, describe_failure(back)


def test_kill_9_comes_back_within_restart_sec(world: tuple[SandboxHost, Path]) -> None:
    host, _ = world
    old = unit_show(host, "MainPID", "NRestarts")
    host.ssh(f"kill -9 {old['MainPID']}")

    started = time.monotonic()
    # RestartSec, then the engine's start-up until the health gate lets the unit be active
    wait_until(
        lambda: unit_show(host, "MainPID", "NRestarts", "ActiveState"),
        lambda now: now["ActiveState"] == "active" and now["NRestarts"] != old["NRestarts"],
        f"{UNIT} active again after a restart",
        timeout=RESTART_SEC + 180,
    )
    assert time.monotonic() - started >= RESTART_SEC - 1
    assert http(host, "/health")[0] == 200


def test_broken_model_path_crash_loops_into_failed_and_converge_fails(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    broken = converge(inventory, "--data", "model_dir=/srv/autoglm/models/missing",
                      deploy=SERVICE)  # fmt: skip
    assert broken.returncode != 0
    assert "did not start or did not become healthy" in broken.stderr, broken.stderr[-3000:]
    assert "models/missing/config.json not found: model_dir is wrong" in broken.stderr
    assert "Traceback (most recent call last)" not in broken.stderr.split("Last log lines")[0]

    def failed() -> bool:
        return unit_show(host, "ActiveState")["ActiveState"] == "failed"

    wait_until(failed, bool, f"{UNIT} failed after {BURST} starts", BURST * (RESTART_SEC + 60))
    restarts = unit_show(host, "NRestarts")["NRestarts"]
    assert int(restarts) <= BURST, restarts
    journal = host.ssh(f"journalctl -u {UNIT} --no-pager -o cat").stdout
    assert "Start request repeated too quickly" in journal, journal[-2000:]
    # An absence (no further restart) cannot be polled for: watch one restart interval.
    time.sleep(RESTART_SEC + 2)
    assert failed(), "a failed unit must stay failed (no restart after the start limit)"
    assert unit_show(host, "NRestarts")["NRestarts"] == restarts
    # the next converge with the good configuration recovers it
    fixed = converge(inventory, deploy=SERVICE)
    assert fixed.returncode == 0, describe_failure(fixed)
    assert unit_show(host, "ActiveState")["ActiveState"] == "active"
    assert http(host, "/health")[0] == 200
