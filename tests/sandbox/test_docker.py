"""Docker mode on a real sandbox host: engine, daemon.json, toolkit stand-ins, hardened container.

The host is prepared for Docker (HostSpec(docker=True)); the engine is Debian's docker.io
from the sandbox's mirror; the toolkit comes from a signed stand-in repository; the image
is a busybox health server loaded from a `docker save` tarball (no registry here). No GPU:
`docker_gpu_devices` is [] so `--gpus` is only unit-tested.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from autoglm_infra.stages.docker.args import (
    API_KEY_FILE,
    CONTAINER_NAME,
    ENV_FILE,
    SECRET_MOUNT,
    SPEC_LABEL,
)
from autoglm_testbed.cis_docker import Finding, evaluate, format_findings, warnings
from autoglm_testbed.converge import converge_twice, describe_failure, run_pyinfra
from autoglm_testbed.hosts import SandboxHost, write_inventory
from autoglm_testbed.waiting import container_state, health_of, unit_properties, wait_until
from autoglm_testbed.world import Standins, docker_host_data

DEPLOY = "deploys/docker.py"
UNIT = "autoglm-docker.service"
API_KEY = "sk-test-" + "7" * 40
WRONG_KEY = "sk-wrong-" + "0" * 39


@pytest.fixture(scope="module", autouse=True)
def api_key_on_controller() -> Iterator[None]:
    """The API key comes from the controller's environment, as users provide it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOGLM_API_KEY", API_KEY)
        yield


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    standins: Standins,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    (host,) = sandbox_hosts(1, docker=True)
    # what the model stage leaves behind
    host.ssh("mkdir -p /srv/autoglm/models/AutoGLM-Phone-9B && echo {} > "
             "/srv/autoglm/models/AutoGLM-Phone-9B/config.json")  # fmt: skip
    inventory = tmp_path_factory.mktemp("docker") / "inventory.py"
    write_inventory(inventory, [host], {}, docker_host_data(standins))
    return host, inventory


def inspect(host: SandboxHost) -> dict[str, Any]:
    doc = json.loads(host.ssh(f"docker inspect {CONTAINER_NAME}").stdout)
    assert isinstance(doc, list)
    return dict(doc[0])


def wait_healthy(host: SandboxHost) -> dict[str, Any]:
    return wait_until(
        lambda: container_state(host, CONTAINER_NAME),
        lambda doc: health_of(doc) == "healthy",
        f"container {CONTAINER_NAME} healthy",
    )


def test_converge_runs_hardened_container_and_second_run_changes_nothing(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    first, _second = converge_twice(inventory, DEPLOY)
    assert first.changed()
    pkgs = host.ssh("dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' "
                    "docker.io 'nvidia-container-*' 'libnvidia-container*'").stdout  # fmt: skip
    pkgs = "\n".join(" ".join(line.split()) for line in pkgs.splitlines())
    assert "ii docker.io" in pkgs
    for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                 "libnvidia-container-tools", "libnvidia-container1"):  # fmt: skip
        assert f"hi {name} 1.17.8-1" in pkgs, pkgs
    daemon = json.loads(host.ssh("cat /etc/docker/daemon.json").stdout)
    assert daemon["no-new-privileges"] is True and daemon["live-restore"] is True
    assert daemon["userland-proxy"] is False and daemon["log-opts"]["max-file"] == "5"
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    verify = host.ssh(f"systemd-analyze verify /etc/systemd/system/{UNIT} 2>&1", check=False)
    assert verify.stdout.strip() == "", verify.stdout
    info = host.ssh("docker info -f '{{.LiveRestoreEnabled}}'").stdout.strip()
    assert info == "true", "dockerd must run with our daemon.json"

    doc = inspect(host)
    hc = doc["HostConfig"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert "no-new-privileges:true" in hc["SecurityOpt"]
    assert not any("unconfined" in opt for opt in hc["SecurityOpt"])
    assert hc["Privileged"] is False
    assert hc["IpcMode"] != "host" and hc["PidMode"] != "host" and hc["NetworkMode"] != "host"
    assert hc["PidsLimit"] == 256
    assert hc["Memory"] == 256 * 1024**2 and hc["MemorySwap"] == 256 * 1024**2
    assert hc["NanoCpus"] == 1_000_000_000
    assert hc["ShmSize"] == 64 * 1024**2
    assert hc["Tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,exec")
    assert hc["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]}
    assert hc["AutoRemove"] is True and hc["RestartPolicy"]["Name"] in ("", "no")
    assert not hc["Devices"]
    assert doc["Config"]["User"] == "2000:0"
    mounts = {m["Destination"]: m for m in doc["Mounts"]}
    assert mounts["/models/autoglm"]["RW"] is False
    assert mounts["/home/vllm/.cache"]["Type"] == "volume" and mounts["/home/vllm/.cache"]["RW"]
    assert doc["Config"]["Healthcheck"]["StartPeriod"] == 30 * 10**9
    assert doc["State"]["Health"]["Status"] == "healthy"
    assert doc["Config"]["Labels"][SPEC_LABEL]

    # really served, on loopback only, as the non-root user, read-only but for /tmp
    probe = "import urllib.request as u;print(u.urlopen('http://127.0.0.1:8000/health').read())"
    assert host.ssh(f'python3 -c "{probe}"').stdout.strip() == "b'ok\\n'"
    assert host.ssh(f"docker exec {CONTAINER_NAME} id -u").stdout.strip() == "2000"
    assert host.ssh(f"docker exec {CONTAINER_NAME} touch /x", check=False).returncode != 0
    host.ssh(f"docker exec {CONTAINER_NAME} touch /tmp/x /home/vllm/.cache/x")
    status = host.ssh(f"docker exec {CONTAINER_NAME} cat /proc/1/status").stdout
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status


def test_api_key_stays_out_of_argv_inspect_and_readable_files(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    run = run_pyinfra(inventory, DEPLOY, "-vvv", env={"AUTOGLM_API_KEY": API_KEY})
    assert run.returncode == 0, describe_failure(run)
    assert API_KEY not in run.stderr and API_KEY not in json.dumps(run.report)
    assert host.ssh(f"stat -c '%a %U' {ENV_FILE}").stdout.strip() == "600 root"
    doc = inspect(host)
    assert API_KEY not in json.dumps(doc["Config"]["Cmd"]) + json.dumps(doc["Args"])
    assert API_KEY not in host.ssh(f"systemctl show {UNIT} -p ExecStart --no-pager").stdout
    assert API_KEY not in host.ssh(f"cat /etc/systemd/system/{UNIT}").stdout
    argv = host.ssh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", check=False).stdout
    assert API_KEY not in argv
    readable = host.ssh(
        f"grep -rls {API_KEY} /etc /var/lib/autoglm /srv /root /tmp 2>/dev/null | "
        "xargs -r stat -c '%a %n'", check=False,
    ).stdout.split("\n")  # fmt: skip
    for line in filter(None, readable):
        mode, path = line.split(" ", 1)
        assert int(mode[-1]) & 4 == 0 and int(mode[-2]) & 4 == 0, f"{path} readable ({mode})"
    # it did reach the container, through the env file
    env = host.ssh(f"docker exec {CONTAINER_NAME} sh -c 'cat /proc/1/environ'").stdout
    assert f"VLLM_API_KEY={API_KEY}" in env


def engine_get(host: SandboxHost, path: str, key: str | None = None,
               key_file: str | None = None) -> tuple[int, str]:  # fmt: skip
    """(status, body) of a GET from the host itself to the engine's loopback port.

    With key_file the key is read on the host as the smoke test reads it (a plain key, or
    VLLM_API_KEY=... in the env file): never in an argv, never on the controller.
    """
    code = (
        "import urllib.request as u, urllib.error as e\n"
        f"key, key_file = {key!r}, {key_file!r}\n"
        "if key_file:\n"
        "    text = open(key_file).read().strip()\n"
        "    found = [v for n, s, v in (x.partition('=') for x in text.splitlines())\n"
        "             if s and n.strip() == 'VLLM_API_KEY']\n"
        "    key = found[0].strip() if found else text\n"
        "headers = {'Authorization': 'Bearer ' + key} if key else {}\n"
        f"r = u.Request('http://127.0.0.1:8000{path}', headers=headers)\n"
        "try:\n    s = u.urlopen(r, timeout=60); print(s.status); print(s.read().decode())\n"
        "except e.HTTPError as x:\n    print(x.code); print(x.read().decode())\n"
    )
    out = host.ssh(f"python3 -c {shlex.quote(code)}", timeout=90).stdout
    status, _, text = out.partition("\n")
    return int(status), text.strip()


def engine_client(port: int, api_key: str) -> openai.OpenAI:
    """The official client on a tunnelled engine port; no retries, so a 401 surfaces at once."""
    url = f"http://127.0.0.1:{port}/v1"
    return openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=60)


def test_engine_refuses_a_wrong_or_missing_key_like_vllm_and_health_stays_open(
    world: tuple[SandboxHost, Path],
) -> None:
    """The stand-in checks VLLM_API_KEY as vLLM does: /v1 needs `Bearer <key>`, /health not.

    The official openai client goes through an SSH tunnel to the host's loopback port; the
    verify stage's smoke test (which sends the key from the host's env file) passes.
    """
    host, inventory = world
    converged = run_pyinfra(inventory, DEPLOY, env={"AUTOGLM_API_KEY": API_KEY})
    assert converged.returncode == 0, describe_failure(converged)
    wait_healthy(host)
    status, body = engine_get(host, "/v1/models")
    assert (status, json.loads(body)) == (401, {"error": "Unauthorized"})
    assert engine_get(host, "/v1/models", key=WRONG_KEY)[0] == 401
    status, body = engine_get(host, "/v1/models", key_file=ENV_FILE)
    assert status == 200 and "autoglm-phone-9b" in body, body
    assert engine_get(host, "/health") == (200, "ok")

    key = host.ssh(f"sed -n 's/^VLLM_API_KEY=//p' {ENV_FILE}").stdout.strip()
    with host.forward(8000) as port:
        with pytest.raises(openai.AuthenticationError) as refused:
            engine_client(port, WRONG_KEY).models.list()
        assert refused.value.status_code == 401
        assert [m.id for m in engine_client(port, key).models.list()] == ["autoglm-phone-9b"]

    smoke = run_pyinfra(inventory, "deploys/verify.py", "-v")
    assert smoke.returncode == 0, describe_failure(smoke)
    assert smoke.changed() == []


def cis_findings(host: SandboxHost, container: str = CONTAINER_NAME) -> list[Finding]:
    """CIS section 5 over the live container: inspect, docker info, docker top, daemon.json."""
    doc = json.loads(host.ssh(f"docker inspect {container}").stdout)[0]
    info = json.loads(host.ssh("docker info --format '{{json .}}'").stdout)
    top = host.ssh(f"docker top {container} -o pid,args").stdout.splitlines()[1:]
    processes = [line.split(None, 1)[-1] for line in top]
    daemon = json.loads(host.ssh("cat /etc/docker/daemon.json").stdout)
    return evaluate(doc, info, processes, daemon.get("no-new-privileges") is True)


def cis_exclusions(host: SandboxHost) -> list[str]:
    """5.2 (AppArmor) only where the daemon has no AppArmor to apply."""
    options = json.loads(host.ssh("docker info --format '{{json .SecurityOptions}}'").stdout)
    return [] if any("apparmor" in opt for opt in options) else ["5.2"]


def test_cis_container_runtime_checks_report_no_warning(world: tuple[SandboxHost, Path]) -> None:
    """docker-bench section 5 logic (cis_docker) on the real container: no WARN.

    Excluded only when the host cannot provide it: 5.2 AppArmor, when the daemon reports
    no AppArmor (a systemd-nspawn host has no AppArmor of its own; on Ubuntu hosts Docker
    applies docker-default and 5.2 passes). Every other check counts, including the
    daemon-level 5.1 (swarm) and 5.7 (sshd, from `docker top`).
    """
    host, _ = world
    findings = cis_findings(host)
    print(format_findings(findings))  # the docker-bench-style report, shown with -rP
    assert warnings(findings, exclude=cis_exclusions(host)) == [], format_findings(findings)
    results = {f.id: f.result for f in findings}
    for check_id in ("5.1", "5.4", "5.5", "5.7", "5.11", "5.12", "5.13", "5.14", "5.17",
                     "5.22", "5.26", "5.27", "5.29", "5.32"):  # fmt: skip
        assert results[check_id] == "PASS", format_findings(findings)


def test_doctor_names_privileged_and_wildcard_published_container_then_recovers(
    world: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    """Break the converged host by hand (`docker run --privileged -p 0.0.0.0:...`): the doctor
    fails `containers` naming both with the fix; CIS 5.5 and 5.14 warn; removing it restores."""
    host, inventory = world
    image = json.loads(host.ssh(f"docker inspect {CONTAINER_NAME}").stdout)[0]["Image"]
    rogue = "doctor-rogue"
    host.ssh(f"docker rm -f {rogue} >/dev/null 2>&1; docker run -d --name {rogue} --privileged "
             f"-p 0.0.0.0:8081:8000 {image} /bin/httpd -f -p 8000 -h /www")  # fmt: skip
    try:
        rc, checks = doctor(inventory, tmp_path / "broken")
        row = checks["containers"]
        assert rc != 0 and row["status"] == "fail", row
        assert f"privileged: {rogue}" in row["evidence"], row
        assert f"published on all interfaces: {rogue}" in row["evidence"], row
        assert "without --privileged" in row["fix"] and "127.0.0.1:PORT:PORT" in row["fix"], row
        assert CONTAINER_NAME not in row["evidence"], row
        rogue_warns = {f.id for f in warnings(cis_findings(host, rogue))}
        assert {"5.5", "5.14"} <= rogue_warns, rogue_warns
    finally:
        host.ssh(f"docker rm -f {rogue}")
    _rc, checks = doctor(inventory, tmp_path / "restored")
    assert checks["containers"]["status"] == "ok", checks["containers"]
    assert f"{CONTAINER_NAME} healthy" in checks["containers"]["evidence"]


def doctor(inventory: Path, out: Path) -> tuple[int, dict[str, dict[str, str]]]:
    result = run_pyinfra(inventory, "deploys/doctor.py", env={"AUTOGLM_CHECKS_JSON": str(out)})
    assert result.changed() == [] and result.operations == [], "the doctor must change nothing"
    (report,) = out.glob("*.doctor.json")
    checks = {c["name"]: c for c in json.loads(report.read_text())["checks"]}
    return result.returncode, checks


def test_kill_9_of_the_container_process_brings_the_service_back(
    world: tuple[SandboxHost, Path],
) -> None:
    host, _ = world
    before = inspect(host)
    restarts_before = int(unit_properties(host, UNIT, "NRestarts")["NRestarts"])
    host.ssh(f"kill -9 {before['State']['Pid']}")
    # After a restart the unit stays `activating` until its health gate has seen the new
    # container healthy: wait for the unit's own `active`, never assert the transition.
    unit = wait_until(
        lambda: unit_properties(host, UNIT, "ActiveState", "SubState", "NRestarts"),
        lambda u: u["ActiveState"] == "active" and int(u["NRestarts"]) > restarts_before,
        f"{UNIT} active again after a restart",
    )
    assert unit["SubState"] == "running", unit
    after = wait_healthy(host)
    assert after["Id"] != before["Id"], "the unit recreates the container"


def test_changed_flag_recreates_container_exactly_once(world: tuple[SandboxHost, Path]) -> None:
    host, inventory = world
    env = {"AUTOGLM_API_KEY": API_KEY}
    before = inspect(host)
    changed = run_pyinfra(inventory, DEPLOY, "--data", "docker_memory=300m", env=env)
    assert changed.returncode == 0, describe_failure(changed)
    restarted = [op for op in changed.changed() if "(re)start" in op]
    assert len(restarted) == 1, changed.changed()
    after = inspect(host)
    assert after["Id"] != before["Id"] and after["HostConfig"]["Memory"] == 300 * 1024**2
    same = run_pyinfra(inventory, DEPLOY, "--data", "docker_memory=300m", env=env)
    assert same.returncode == 0 and same.changed() == [], describe_failure(same)
    assert inspect(host)["Id"] == after["Id"]
    back = run_pyinfra(inventory, DEPLOY, env=env)
    assert back.returncode == 0, describe_failure(back)


def test_secret_mount_keeps_key_out_of_inspect_and_container_reads_it(
    world: tuple[SandboxHost, Path], standins: Standins, tmp_path: Path
) -> None:
    """docker_api_key_delivery: secret-mount: a 0440 root file mounted read-only, loaded by a
    shell before the entrypoint; nothing in `docker inspect`; back to env-file afterwards."""
    host, inventory = world
    env = {"AUTOGLM_API_KEY": API_KEY}
    mounted = tmp_path / "inventory.py"
    data = {**docker_host_data(standins), "docker_api_key_delivery": "secret-mount",
            "docker_entrypoint": []}  # fmt: skip
    write_inventory(mounted, [host], {}, data)
    first, _second = converge_twice(mounted, DEPLOY)
    assert any("(re)start" in op for op in first.changed()), first.changed()
    doc = wait_healthy(host)
    assert API_KEY not in json.dumps(doc), "the key must not be in docker inspect"
    assert not any(e.startswith("VLLM_API_KEY") for e in doc["Config"]["Env"])
    mounts = {m["Destination"]: m for m in doc["Mounts"]}
    secret = mounts[SECRET_MOUNT]
    assert secret["Source"] == API_KEY_FILE and secret["RW"] is False
    assert host.ssh(f"stat -c '%a %U %G' {API_KEY_FILE}").stdout.split() == ["440", "root", "root"]
    assert host.ssh(f"test -e {ENV_FILE}", check=False).returncode != 0, "env file left behind"
    # the container's main process (httpd, exec'd by the loader) has the key; argv does not
    environ = host.ssh(f"docker exec {CONTAINER_NAME} cat /proc/1/environ").stdout
    assert f"VLLM_API_KEY={API_KEY}" in environ
    argv = host.ssh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", check=False).stdout
    assert API_KEY not in argv
    assert warnings(cis_findings(host), exclude=cis_exclusions(host)) == []
    # the loader's key is the one the engine checks
    assert [engine_get(host, "/v1/models", key=WRONG_KEY)[0],
            engine_get(host, "/v1/models", key_file=API_KEY_FILE)[0]] == [401, 200]  # fmt: skip
    back = run_pyinfra(inventory, DEPLOY, env=env)
    assert back.returncode == 0, describe_failure(back)
    assert host.ssh(f"test -e {API_KEY_FILE}", check=False).returncode != 0
    assert f"VLLM_API_KEY={API_KEY}" in json.dumps(wait_healthy(host)["Config"]["Env"])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["docker_toolkit_key_fingerprint=" + "A" * 40], ["A" * 40, "nothing was trusted"]),
        (["docker_image=sha256:" + "0" * 64], ["holds image", "nothing was uploaded"]),
        (["docker_user=0:0", "docker_memory=lots"], ["docker_user = '0:0'", "docker_memory"]),
    ],
)
def test_refusals_name_the_problem(
    world: tuple[SandboxHost, Path], data: list[str], expected: list[str]
) -> None:
    _host, inventory = world
    extra = [arg for item in data for arg in ("--data", item)]
    result = run_pyinfra(inventory, DEPLOY, *extra, env={"AUTOGLM_API_KEY": API_KEY})
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
