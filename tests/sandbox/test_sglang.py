"""serve_engine: sglang on a sandbox host: python env -> model -> service -> verify.

The real SGLang needs an NVIDIA GPU; the host gets the CPU stand-in
(autoglm_testbed.sglang_standin: SGLang 0.5.23's `sglang serve` flags, `--config` YAML,
start-up log and HTTP API, answering with the tiny model through transformers). Its lock
is the cpu profile plus the stand-in wheel, under the name of the real profile
(`sglang-0.5.23-cu130`), so the python env stage picks it from the stack plan exactly as on
a GPU host. Everything else is the production path: the hardened unit, the key handed
over through LoadCredential and a private YAML file, the /health gate and the verify
stage's smoke test through the OpenAI-compatible API.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stages.python_env import venv as pe
from autoglm_infra.stages.service.engine_args import SGLANG_KEY_CONFIG
from autoglm_testbed.converge import ConvergeResult, describe_failure, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.hub_standin import HubStandin
from autoglm_testbed.pypi_mirror import PypiMirror, WheelCache, sha256_file
from autoglm_testbed.sglang_standin import build_wheel, standin_lock
from autoglm_testbed.waiting import unit_properties
from autoglm_testbed.world import controller_address

STAGES = ("deploys/python_env.py", "deploys/model.py", "deploys/service.py", "deploys/verify.py")
PROFILE = "sglang-0.5.23-cu130"
UNIT = "autoglm-serve.service"
REPO = "test-org/AutoGLM-Tiny"
MODEL_NAME = "autoglm-tiny"
PORT = 8000
KEY = "sgl-key-Vq3'x9Lm#Rt"  # a quote and a '#': the YAML file must carry it whole


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the stand-in wheel, a locks dir whose sglang-0.5.23-cu130.txt installs it)."""
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    locks = tmp_path_factory.mktemp("locks")
    cpu = (DEFAULT_LOCKS_DIR / "cpu.txt").read_text()
    (locks / f"{PROFILE}.txt").write_text(standin_lock(cpu, wheel))
    return wheel, locks


@pytest.fixture(scope="module")
def mirror(
    sandbox: Sandbox, standin: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PypiMirror]:
    cache = WheelCache()
    wheels = cache.ensure(pe.load_lock("cpu", DEFAULT_LOCKS_DIR))
    wheel = cache.add(standin[0], [sha256_file(standin[0])])
    sandbox._ensure_network()
    address = controller_address(sandbox)
    with PypiMirror(tmp_path_factory.mktemp("pypi"), address, [*wheels, wheel]) as served:
        yield served


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    mirror: PypiMirror,
    tiny_hub: HubStandin,
    standin: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    (host,) = sandbox_hosts(1)
    work = tmp_path_factory.mktemp("sglang")
    data: dict[str, object] = {
        "nvidia_require_gpu": False,
        "pip_index_url": mirror.index_url,
        "python_torch_index_url": None,  # the mirror holds torch+cpu too
        "python_locks_dir": str(standin[1]),
        "model_repo": REPO,
        "model_dir": "/srv/autoglm/models/tiny",
        "hub_endpoint": tiny_hub.url,
        "model_lock_dir": str(work / "locks"),
        "serve_engine": "sglang",
        "vllm_max_model_len": 2048,  # the tiny model's context
        "verify_expect_reasoning": False,  # the tiny model writes no <think> block
        "service_start_timeout_sec": 180,
    }
    inventory = work / "inventory.py"
    write_inventory(inventory, [host], {}, data)
    return host, inventory


def converge(inventory: Path, *args: str, stages: tuple[str, ...] = STAGES) -> ConvergeResult:
    return run_pyinfra(inventory, stages[0], *stages[1:], *args, env={"AUTOGLM_API_KEY": KEY})


def http(host: SandboxHost, path: str, key: str | None = None) -> tuple[int, str]:
    """(status, body) of a GET from the host itself to the loopback endpoint."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    code = (
        "import urllib.request as u, urllib.error as e\n"
        f"r = u.Request('http://127.0.0.1:{PORT}{path}', headers={headers!r})\n"
        "try:\n    s = u.urlopen(r, timeout=60); print(s.status); print(s.read().decode())\n"
        "except e.HTTPError as x:\n    print(x.code); print(x.read().decode())\n"
    )
    out = host.ssh(f"python3 -c {shlex.quote(code)}", timeout=90).stdout
    status, _, text = out.partition("\n")
    return int(status), text.strip()


def snapshot(host: SandboxHost) -> dict[str, str]:
    """What a refused converge must leave as it was."""
    state = unit_properties(host, UNIT, "InvocationID", "ActiveState")
    state["unit"] = host.ssh(f"sha256sum /etc/systemd/system/{UNIT}").stdout
    state["venv"] = host.ssh("readlink -f /opt/autoglm/venv || true").stdout
    return state


def test_sglang_converges_and_passes_the_smoke_test_then_changes_nothing(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    first = converge(inventory, "-v")
    assert first.returncode == 0, describe_failure(first)
    assert f"python env: profile {PROFILE}" in first.stderr
    assert "chat completion in" in first.stderr  # the verify stage's smoke test
    second = converge(inventory)
    assert second.returncode == 0, describe_failure(second)
    assert second.changed() == [], second.changed()

    start = host.ssh(f"systemctl show -p ExecStart {UNIT}").stdout
    assert "/opt/autoglm/venv/bin/sglang serve --model-path /srv/autoglm/models/tiny" in start
    assert f"--config {SGLANG_KEY_CONFIG}" in start and "--log-level warning" in start
    assert http(host, "/health") == (200, "")  # no key needed, as in SGLang
    assert http(host, "/v1/models")[0] == 401
    status, models = http(host, "/v1/models", KEY)
    assert status == 200 and [m["id"] for m in json.loads(models)["data"]] == [MODEL_NAME]


def test_sglang_service_has_the_vllm_hardening(world: tuple[SandboxHost, Path]) -> None:
    host, _ = world
    pid = unit_properties(host, UNIT, "MainPID")["MainPID"]
    assert host.ssh(f"ps -o user= -p {pid}").stdout.strip() == "autoglm"
    status = host.ssh(f"grep -E '^(NoNewPrivs|CapEff)' /proc/{pid}/status").stdout
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status
    exposure = host.ssh(f"systemd-analyze security {UNIT} --no-pager | tail -1").stdout
    assert float(re.findall(r"(\d+\.\d)", exposure)[0]) <= 1.5, exposure
    config = host.ssh(f"stat -c '%a %U' {SGLANG_KEY_CONFIG} $(dirname {SGLANG_KEY_CONFIG})")
    assert config.stdout.split("\n")[:2] == ["600 autoglm", "700 autoglm"]


def test_sglang_key_is_in_no_argv_unit_property_or_journal(world: tuple[SandboxHost, Path]) -> None:
    """SGLang logs its server args, key included, at info: the unit runs it at warning."""
    host, inventory = world
    again = converge(inventory, "-vvv", stages=("deploys/service.py",))
    assert again.returncode == 0 and again.changed() == [], describe_failure(again)
    journal = host.ssh(f"journalctl -u {UNIT} --no-pager -o verbose").stdout
    assert "health gate:" in journal  # the journal is there; the key is not
    for place in (
        again.stderr,
        json.dumps(again.report),
        host.ssh("ps auxww").stdout,
        host.ssh(f"systemctl show {UNIT}").stdout,
        host.ssh(f"cat /etc/systemd/system/{UNIT}").stdout,
        journal,
    ):
        assert KEY not in place


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            "serve_engine_version=0.5.99",
            "serve_engine_version='0.5.99' is not a known sglang release: use auto or one of "
            "0.5.23, 0.5.6.post1",
        ),
        (
            "nvidia_driver_branch=570",
            "nvidia_driver_branch=570 (570.172.08) is too old for every sglang 0.5.23 wheel: "
            "the lowest, cu130, needs driver >= 580.95.05: use a newer nvidia_driver_branch",
        ),
    ],
)
def test_bad_sglang_input_is_refused_and_changes_nothing(
    world: tuple[SandboxHost, Path], data: str, message: str
) -> None:
    host, inventory = world
    before = snapshot(host)
    refused = converge(inventory, "--data", data)
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert refused.changed() == []
    assert snapshot(host) == before


def test_at_info_sglang_logs_the_key_which_is_why_no_one_may_lower_the_unit_s_level(
    world: tuple[SandboxHost, Path],
) -> None:
    """The hazard the unit's `--log-level warning` avoids (sgl-project/sglang #37457), shown
    with the venv's engine run by hand: at info its start-up dump prints the key from the
    --config file, at warning it does not. serve_extra_args may not change the level."""
    host, inventory = world
    refused = converge(inventory, "--data", 'serve_extra_args=["--log-level","info"]')
    assert refused.returncode != 0 and refused.changed() == []
    assert "'--log-level' is set by this project: SGLang logs every argument" in refused.stderr
    probe_key = "probe-key-7c1e"  # not the service's key: this file is the test's own
    config = "/root/sglang-probe.yaml"
    host.ssh(f"umask 077 && echo 'api-key: {probe_key}' > {config}")
    try:
        logs = {}
        for level in ("info", "warning"):
            # the model path does not exist: the engine logs its arguments, then fails to load
            run = host.ssh(
                f"timeout 60 /opt/autoglm/venv/bin/sglang serve --model-path /nonexistent "
                f"--port 18999 --config {config} --log-level {level} 2>&1 || true",
                timeout=90,
            )
            logs[level] = run.stdout
        assert "server_args=" in logs["info"] and probe_key in logs["info"], logs["info"]
        assert "Scheduler hit an exception" in logs["warning"], logs["warning"]
        assert probe_key not in logs["warning"], logs["warning"]
    finally:
        host.ssh(f"rm -f {config}")
