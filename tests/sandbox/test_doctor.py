"""The doctor on a host converged with deploys/full.py: healthy has no failure; each
breakage that can be made without a GPU is named with its fix, then undone."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm_testbed.converge import describe_failure, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.proxy import ProxyStandin
from autoglm_testbed.waiting import unit_properties, wait_until
from autoglm_testbed.world import (
    TINY_MODEL_DIR,
    Standins,
    controller_address,
    full_group_data,
    host_data_for,
)

UNIT = "autoglm-serve.service"
HF_HOME = "/var/cache/autoglm/huggingface"
TRITON = "/var/cache/autoglm/triton"
COMPILE_CACHE = "/var/cache/autoglm/vllm/torch_compile_cache"
VENV = "/opt/autoglm/venv"
Checks = dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def converged(full_world_host: tuple[SandboxHost, Path]) -> tuple[SandboxHost, Path]:
    _, inventory = full_world_host
    result = run_pyinfra(inventory, "deploys/full.py")
    assert result.returncode == 0, describe_failure(result)
    return full_world_host


def doctor(inventory: Path, out: Path, *extra: str) -> tuple[int, Checks, str]:
    result = run_pyinfra(
        inventory, "deploys/doctor.py", *extra, env={"AUTOGLM_CHECKS_JSON": str(out)}
    )
    assert result.changed() == [] and result.operations == [], "the doctor must change nothing"
    (report_file,) = out.glob("*.doctor.json")
    checks = {c["name"]: c for c in json.loads(report_file.read_text())["checks"]}
    return result.returncode, checks, result.stderr


def failing(checks: Checks) -> set[str]:
    return {name for name, c in checks.items() if c["status"] == "fail"}


def test_healthy_host_has_no_failures(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    _, inventory = converged
    rc, checks, stderr = doctor(inventory, tmp_path)
    assert rc == 0 and failing(checks) == set(), stderr[-3000:]
    for name in ("model files", "model format", "service unit", "health", "venv lock",
                 "engine versions", "pip check", "cache permissions", "reach pip index",
                 "reach model hub", "packages", "host resources", "endpoint exposure",
                 "model access", "cache mounts", "stale caches", "cache ownership", "selinux",
                 "apparmor"):  # fmt: skip
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["gpu present"]["status"] == "skip"  # GPU-less by configuration
    assert checks["containers"]["status"] == "skip"  # venv host: no docker
    assert checks["context length"]["status"] == "skip"  # the CPU engine


def test_missing_shard_is_named(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    host, inventory = converged
    name = host.ssh(f"cd {TINY_MODEL_DIR} && ls model-00001-of-*.safetensors").stdout.strip()
    shard = f"{TINY_MODEL_DIR}/{name}"
    host.ssh(f"mv {shard} /root/shard.aside")  # mv keeps mtime and inode: the stamp holds
    try:
        rc, checks, _ = doctor(inventory, tmp_path)
    finally:
        host.ssh(f"mv /root/shard.aside {shard}")
    assert rc != 0
    assert f"missing: {name}" in checks["model files"]["evidence"]
    assert "deploys/model.py" in checks["model files"]["fix"]
    assert "names files that are not present" in checks["model format"]["evidence"]


def test_deep_mode_names_a_shard_changed_under_its_stamp(
    converged: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    host, inventory = converged
    name = host.ssh(f"cd {TINY_MODEL_DIR} && ls model-00001-of-*.safetensors").stdout.strip()
    shard = f"{TINY_MODEL_DIR}/{name}"

    def keeping_mtime(command: str) -> str:
        return f'm=$(stat -c %y {shard}); {command}; touch -d "$m" {shard}'

    host.ssh(f"cp -p {shard} /root/shard.orig")
    # bit rot: same size, same inode, mtime put back; the stamp still matches
    host.ssh(keeping_mtime(f"printf XXXX | dd of={shard} bs=1 seek=1000 conv=notrunc status=none"))
    try:
        rc, checks, _ = doctor(inventory, tmp_path / "stamp")
        assert rc == 0 and checks["model files"]["status"] == "ok"
        assert "model contents" not in checks  # not re-hashed unless asked
        rc, checks, stderr = doctor(
            inventory, tmp_path / "full", "--data", "doctor_model_verify=full"
        )
        assert rc != 0, stderr[-3000:]
        row = checks["model contents"]
        assert row["status"] == "fail" and f"bytes differ from the lock: {name}" in row["evidence"]
        assert "model_verify=full" in row["fix"]
    finally:
        host.ssh(keeping_mtime(f"cat /root/shard.orig > {shard}"))
    rc, checks, stderr = doctor(inventory, tmp_path / "again", "--data", "doctor_model_verify=full")
    assert rc == 0 and checks["model contents"]["status"] == "ok", stderr[-3000:]
    assert "every digest matches the lock" in checks["model contents"]["evidence"]


def test_corrupted_index_is_named(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    host, inventory = converged
    index = f"{TINY_MODEL_DIR}/model.safetensors.index.json"
    host.ssh(f"mv {index} /root/index.aside && echo '{{\"weight_map\": ' > {index}")
    try:
        rc, checks, _ = doctor(inventory, tmp_path)
    finally:
        host.ssh(f"mv /root/index.aside {index}")
    assert rc != 0
    assert "model.safetensors.index.json is not JSON" in checks["model format"]["evidence"]
    assert "model.safetensors.index.json" in checks["model files"]["evidence"]


def test_context_length_above_the_model_is_named(
    converged: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    _, inventory = converged
    extra = ("--data", "serve_engine=vllm", "--data", "vllm_max_model_len=25480")
    rc, checks, _ = doctor(inventory, tmp_path, *extra)
    assert rc != 0
    context = checks["context length"]
    assert context["status"] == "fail" and "max_position_embeddings 2048" in context["evidence"]
    assert context["fix"] == "set vllm_max_model_len to 2048 or less"


@pytest.fixture
def crash_loop(converged: tuple[SandboxHost, Path]) -> Iterator[None]:
    host, _ = converged
    drop_in = f"/etc/systemd/system/{UNIT}.d/zz-doctor-test.conf"
    host.ssh(
        f"mkdir -p $(dirname {drop_in}) && "
        # RestartSec=1h holds the unit in auto-restart however long the doctor takes
        f"printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\nRestartSec=1h\\n' > {drop_in} && "
        f"systemctl daemon-reload && systemctl restart --no-block {UNIT}"
    )
    # the state the doctor must name: waiting to restart after a crash
    wait_until(
        lambda: unit_properties(host, UNIT, "ActiveState", "SubState", "NRestarts"),
        lambda u: u["SubState"] == "auto-restart",
        f"{UNIT} crash-looping (auto-restart)",
    )
    yield
    host.ssh(
        f"rm -f {drop_in} && systemctl daemon-reload && systemctl reset-failed {UNIT}; "
        f"systemctl restart {UNIT}",
        timeout=300,
    )


def test_crash_loop_is_named(
    converged: tuple[SandboxHost, Path], crash_loop: None, tmp_path: Path
) -> None:
    _, inventory = converged
    rc, checks, _ = doctor(inventory, tmp_path)
    assert rc != 0
    unit = checks["service unit"]
    assert unit["status"] == "fail" and "crash loop" in unit["evidence"]
    assert "journalctl -u autoglm-serve.service" in unit["fix"]
    assert checks["health"]["status"] == "fail"


def test_unwritable_cache_is_named(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    host, inventory = converged
    host.ssh(f"chown root:root {HF_HOME}")
    try:
        rc, checks, _ = doctor(inventory, tmp_path)
    finally:
        host.ssh(f"chown autoglm:autoglm {HF_HOME}")
    assert rc != 0
    cache = checks["cache permissions"]
    assert f"not writable by autoglm: {HF_HOME} (root 750)" in cache["evidence"]
    assert "deploys/python_env.py" in cache["fix"]


def test_unreachable_index_is_named(
    converged: tuple[SandboxHost, Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    _, inventory = converged
    closed = f"http://{controller_address(sandbox)}:9/simple/"
    rc, checks, _ = doctor(inventory, tmp_path, "--data", f"pip_index_url={closed}")
    assert rc != 0
    reach = checks["reach pip index"]
    assert reach["status"] == "fail" and closed in reach["evidence"]
    assert "pip_index_url" in reach["fix"]


@pytest.fixture
def listener_on_all_interfaces(converged: tuple[SandboxHost, Path]) -> Iterator[int]:
    host, _ = converged
    pid = host.ssh(
        "nohup python3 -m http.server --bind 0.0.0.0 8001 >/dev/null 2>&1 & echo $!"
    ).stdout.strip()
    wait_until(
        lambda: host.ssh("ss -ltnH 'sport = :8001'").stdout,
        lambda out: "0.0.0.0:8001" in out,
        "a listener on 0.0.0.0:8001",
    )
    yield 8001
    host.ssh(f"kill {pid}")


def test_endpoint_on_all_interfaces_is_named_with_the_fix(
    converged: tuple[SandboxHost, Path], listener_on_all_interfaces: int, tmp_path: Path
) -> None:
    _, inventory = converged
    rc, checks, stderr = doctor(inventory, tmp_path, "--data", "serve_port=8001")
    assert rc != 0
    exposure = checks["endpoint exposure"]
    assert exposure["status"] == "fail" and "0.0.0.0" in exposure["evidence"]
    assert "127.0.0.1:PORT:PORT" in exposure["fix"]
    assert "doctor found problems" in stderr and "Traceback" not in stderr


def test_too_little_disk_is_named(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    _, inventory = converged
    rc, checks, _ = doctor(inventory, tmp_path, "--data", "preflight_min_disk_gib=1000000")
    assert rc != 0
    assert "preflight_min_disk_gib is 1000000" in checks["host resources"]["evidence"]


def test_model_dir_unreadable_by_the_service_user_is_named(
    converged: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    host, inventory = converged
    mode = host.ssh(f"stat -c %a {TINY_MODEL_DIR}").stdout.strip()
    host.ssh(f"chmod 0700 {TINY_MODEL_DIR}")
    try:
        rc, checks, _ = doctor(inventory, tmp_path)
    finally:
        host.ssh(f"chmod {mode} {TINY_MODEL_DIR}")
    assert rc != 0
    access = checks["model access"]
    assert access["status"] == "fail" and "autoglm cannot read" in access["evidence"]
    assert TINY_MODEL_DIR in access["evidence"] and "Permission denied" in access["evidence"]
    assert f"chmod -R a+rX {TINY_MODEL_DIR}" in access["fix"]


@pytest.fixture
def triton_cache_on_ro_noexec_mount(converged: tuple[SandboxHost, Path]) -> Iterator[str]:
    """A bind mount of the Triton cache onto itself, remounted read-only and noexec."""
    host, _ = converged
    host.ssh(f"mount --bind {TRITON} {TRITON} && mount -o remount,bind,ro,noexec {TRITON}")
    yield TRITON
    host.ssh(f"umount {TRITON}")


def test_cache_on_ro_noexec_mount_is_named(
    converged: tuple[SandboxHost, Path], triton_cache_on_ro_noexec_mount: str, tmp_path: Path
) -> None:
    _, inventory = converged
    rc, checks, _ = doctor(inventory, tmp_path)
    assert rc != 0
    mounts = checks["cache mounts"]
    assert mounts["status"] == "fail"
    assert f"{TRITON} is on a read-only mount ({TRITON})" in mounts["evidence"]
    assert f"{TRITON} is on a noexec mount" in mounts["evidence"]
    assert f"mount -o remount,rw,exec {TRITON}" in mounts["fix"]
    assert checks["cache permissions"]["status"] == "fail"  # access(2) sees the ro mount


@pytest.fixture
def stale_root_owned_compile_cache(converged: tuple[SandboxHost, Path]) -> Iterator[str]:
    """What a torch.compile cache left by an older vLLM, run once as root, looks like."""
    host, _ = converged
    entry = f"{COMPILE_CACHE}/1517964802"
    host.ssh(
        f"mkdir -p {entry}/rank_0_0 && echo '# old' > {entry}/rank_0_0/computation_graph.py && "
        f"touch -d 2024-01-01 {entry}/rank_0_0/computation_graph.py {entry}/rank_0_0 {entry}"
    )
    yield entry
    host.ssh(f"rm -rf {COMPILE_CACHE}")


def test_stale_and_foreign_owned_caches_warn(
    converged: tuple[SandboxHost, Path], stale_root_owned_compile_cache: str, tmp_path: Path
) -> None:
    _, inventory = converged
    entry = stale_root_owned_compile_cache
    rc, checks, _ = doctor(inventory, tmp_path)
    assert rc == 0, "warnings do not fail the host"
    stale = checks["stale caches"]
    assert stale["status"] == "warn" and entry in stale["evidence"]
    assert "rm -rf" in stale["fix"]
    owned = checks["cache ownership"]
    assert owned["status"] == "warn" and f"{COMPILE_CACHE} (root)" in owned["evidence"]
    assert f"chown -R autoglm:autoglm {COMPILE_CACHE} " in owned["fix"]


@pytest.fixture
def proxied(
    converged: tuple[SandboxHost, Path], sandbox: Sandbox, standins: Standins, tmp_path: Path
) -> Iterator[tuple[ProxyStandin, Path]]:
    """The network stage converged with a real proxy (proxy.py, basic auth); undone after."""
    host, inventory = converged
    password = tmp_path / "proxy-password"
    password.write_text("pw-" + secrets.token_hex(8) + "\n")
    password.chmod(0o600)
    proxy = ProxyStandin(
        tmp_path / "proxy", controller_address(sandbox), "svc", password.read_text().strip()
    )
    with_proxy = tmp_path / "inventory-proxy.py"
    proxy_keys = {"proxy_url": proxy.url, "proxy_username": "svc",
                  "proxy_password_file": str(password)}  # fmt: skip
    group_data = {**full_group_data(standins), **proxy_keys}
    write_inventory(with_proxy, [host], host_data_for([host], standins), group_data)
    with proxy:
        result = run_pyinfra(with_proxy, "deploys/network.py")
        assert result.returncode == 0, describe_failure(result)
        try:
            yield proxy, with_proxy
        finally:
            result = run_pyinfra(inventory, "deploys/network.py")  # unset: files removed
            assert result.returncode == 0, describe_failure(result)


def test_stopped_proxy_is_named_and_recovers(
    proxied: tuple[ProxyStandin, Path], tmp_path: Path
) -> None:
    proxy, inventory = proxied
    proxy.stop()
    rc, checks, _ = doctor(inventory, tmp_path / "down")
    assert rc != 0
    row = checks["reach proxy"]
    assert row["status"] == "fail" and f"proxy_url {proxy.url} does not answer" in row["evidence"]
    assert f"start the proxy at {proxy.url}" in row["fix"]
    index = checks["reach pip index"]
    assert index["status"] == "fail" and f"through proxy_url {proxy.url}" in index["evidence"]
    proxy.start()
    rc, checks, stderr = doctor(inventory, tmp_path / "up")
    assert checks["reach proxy"]["status"] == "ok", checks["reach proxy"]
    index = checks["reach pip index"]  # through the proxy, with the host's login
    assert index["status"] == "ok" and "http 200" in index["evidence"], index
    assert rc == 0, stderr[-3000:]


def test_refused_proxy_login_is_named(
    proxied: tuple[ProxyStandin, Path], converged: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    _, inventory = proxied
    host = converged[0]
    env = "/etc/autoglm/network.env"
    host.ssh(f"cp -p {env} {env}.good && sed -i 's/svc:[^@]*@/svc:wrong@/' {env}")
    try:
        rc, checks, _ = doctor(inventory, tmp_path / "login")
    finally:
        host.ssh(f"mv {env}.good {env}")
    assert rc != 0
    assert checks["reach proxy"]["status"] == "ok"  # it answers; it refuses the login
    index = checks["reach pip index"]
    assert index["status"] == "fail" and "refused the host's login (HTTP 407)" in index["evidence"]
    assert "proxy_username" in index["fix"]


def test_venv_drift_is_named(converged: tuple[SandboxHost, Path], tmp_path: Path) -> None:
    """Last: it leaves the venv drifted (the host is removed with the module)."""
    host, inventory = converged
    host.ssh(f"{VENV}/bin/python -m pip uninstall -q -y shellingham")
    rc, checks, _ = doctor(inventory, tmp_path)
    assert rc != 0
    lock = checks["venv lock"]
    assert "shellingham: locked 1.5.4, installed nothing" in lock["evidence"]
    assert "deploys/python_env.py" in lock["fix"]
    assert "shellingham" in checks["pip check"]["evidence"]
