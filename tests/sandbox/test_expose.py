"""The TLS front for real: a venv host serving the tiny model, exposed by nginx from Debian.

Clients are the controller, over the sandbox network, with the deployment's CA pinned
(`requests` verifies the chain and the address against it). Scenarios run in order on the
one host: keys, routes, plaintext, the engine port, idempotence, revocation, rotation,
rate limit, and a refused loopback exposure that changes nothing.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests

from autoglm_infra.stages.expose.clients import client_key_path
from autoglm_testbed.converge import ConvergeResult, describe_failure, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.leaks import ArgvWatch, files_holding_secrets, on_host
from autoglm_testbed.promtool import promtool
from autoglm_testbed.world import Standins, controller_address, docker_host_data, full_group_data

STAGES = ("deploys/python_env.py", "deploys/model.py", "deploys/service.py")
EXPOSE = "deploys/expose.py"
PORT = 8443
METRICS_PORT = 9443
NODE_EXPORTER_STYLE = (
    "should be written in 'snake_case'",
    'use base unit "bytes"',
    'non-counter metrics should not have "_total" suffix',
)
MODEL = "tiny-model"
# systemd-analyze security of nginx.service with the hardening drop-in (README explains)
MAX_EXPOSURE = 2.0
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@dataclass
class Front:
    host: SandboxHost
    work: Path
    data: dict[str, object]
    runs: list[ConvergeResult]

    @property
    def url(self) -> str:
        return f"https://{self.host.address}:{PORT}"

    @property
    def ca(self) -> str:
        return str(self.work / "secrets" / "ca.crt")

    def key(self, client: str) -> str:
        return client_key_path(str(self.work / "secrets"), client).read_text().strip()

    def converge(
        self, *deploys: str, extra: tuple[str, ...] = (), **changes: object
    ) -> ConvergeResult:
        inventory = self.work / "inventory.py"
        write_inventory(inventory, [self.host], {}, {**self.data, **changes})
        return run_pyinfra(inventory, *(deploys or (EXPOSE,)), *extra)

    def get(self, path: str, key: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.get(self.url + path, headers=headers, verify=self.ca, timeout=60)

    def chat(self, key: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(
            f"{self.url}/v1/chat/completions", json=CHAT, headers=headers, verify=self.ca,
            timeout=300,
        )  # fmt: skip

    def nginx_pid(self) -> str:
        return self.host.ssh("systemctl show -p MainPID --value nginx.service").stdout.strip()


@pytest.fixture(scope="module")
def front(
    sandbox: Sandbox,
    sandbox_hosts: Callable[..., list[SandboxHost]],
    standins: Standins,
    tmp_path_factory: pytest.TempPathFactory,
) -> Front:
    (host,) = sandbox_hosts(1)
    work = tmp_path_factory.mktemp("expose")
    data: dict[str, object] = {
        **full_group_data(standins),
        "serve_mode": "venv",
        "serve_expose": f"{host.address}:{PORT}",
        "serve_expose_clients": ["alice", "bob", "carol"],
        "serve_expose_secrets_dir": str(work / "secrets"),
        "serve_expose_health": True,
        "serve_expose_rate_per_minute": 20,
        "serve_expose_burst": 3,
        "service_start_timeout_sec": 300,
        "serve_metrics": f"{host.address}:{METRICS_PORT}",
        "serve_metrics_allow": [controller_address(sandbox)],
    }
    made = Front(host, work, data, [])
    for _ in range(2):
        result = made.converge(*STAGES, EXPOSE)
        assert result.returncode == 0, describe_failure(result)
        made.runs.append(result)
    return made


def test_second_converge_changes_nothing(front: Front) -> None:
    first, second = front.runs
    assert any("Expose" in c for c in first.changed())
    assert second.changed() == []


def test_a_client_key_completes_a_chat_through_the_pinned_front(front: Front) -> None:
    models = front.get("/v1/models", front.key("alice"))
    assert models.status_code == 200, models.text
    assert MODEL in [m["id"] for m in models.json()["data"]]
    assert "max-age=63072000" in models.headers["Strict-Transport-Security"]
    chat = front.chat(front.key("alice"))
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"


def test_tls_is_1_2_or_newer_and_verified_against_the_ca(front: Front) -> None:
    context = ssl.create_default_context(cafile=front.ca)
    with (
        socket.create_connection((front.host.address, PORT), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=front.host.address) as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    with pytest.raises(requests.exceptions.SSLError):  # not trusted without the CA
        requests.get(f"{front.url}/v1/models", timeout=30)


@pytest.mark.parametrize("key", [None, "wrong-key-0123456789abcdefghij"])
def test_no_or_a_wrong_key_gets_401(front: Front, key: str | None) -> None:
    for response in (front.get("/v1/models", key), front.chat(key)):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "data" not in response.json() and "choices" not in response.json()


def test_a_key_with_its_case_flipped_gets_401(front: Front) -> None:
    # nginx matches a map's plain strings ignoring case; the key map must not
    assert front.get("/v1/models", front.key("alice").swapcase()).status_code == 401


@pytest.mark.parametrize(
    "path", ["/tokenize", "/detokenize", "/pause", "/metrics", "/docs", "/v1/embeddings", "/"]
)
def test_routes_outside_the_allowlist_are_refused_even_with_a_key(front: Front, path: str) -> None:
    response = front.get(path, front.key("alice"))
    assert response.status_code == 404, (path, response.text)
    assert response.json()["error"]["message"] == "not found"


def test_health_needs_no_key_and_says_only_that(front: Front) -> None:
    response = front.get("/health")
    assert response.status_code == 200


def test_plain_http_gets_no_data(front: Front) -> None:
    headers = {"Authorization": f"Bearer {front.key('alice')}"}
    response = requests.get(
        f"http://{front.host.address}:{PORT}/v1/models", headers=headers, timeout=30
    )
    assert response.status_code == 400 and MODEL not in response.text
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{front.host.address}/v1/models", headers=headers, timeout=30)


def test_the_engine_port_is_closed_to_other_machines(front: Front) -> None:
    with pytest.raises(OSError):
        socket.create_connection((front.host.address, 8000), timeout=10).close()
    listening = front.host.ssh("ss -Htln 'sport = :8000' | awk '{print $4}'").stdout.split()
    assert listening == ["127.0.0.1:8000"]


def test_key_files_on_the_host_are_for_root_and_nginx_only(front: Front) -> None:
    listing = front.host.ssh("stat -c '%a %U %G %n' /etc/nginx/autoglm /etc/nginx/autoglm/*")
    modes = {line.split()[3]: line.split()[:3] for line in listing.stdout.splitlines()}
    assert modes == {
        "/etc/nginx/autoglm": ["750", "root", "www-data"],
        "/etc/nginx/autoglm/server.crt": ["644", "root", "root"],
        "/etc/nginx/autoglm/server.key": ["640", "root", "www-data"],
        "/etc/nginx/autoglm/clients.map": ["640", "root", "www-data"],
        "/etc/nginx/autoglm/engine-auth.conf": ["640", "root", "www-data"],
        "/etc/nginx/autoglm/engine-auth.source": ["600", "root", "root"],
        "/etc/nginx/autoglm/metrics-auth.conf": ["640", "root", "www-data"],
    }
    keys = "".join(front.key(c) + "\n" for c in ("alice", "bob", "carol"))
    holding = on_host(front.host, "grep -rlF -f - /etc /run /var/log || true", stdin=keys)
    assert holding.split() == ["/etc/nginx/autoglm/clients.map"]
    output = "".join(json.dumps(r.report) + r.stderr for r in front.runs)
    assert not any(front.key(c) in output for c in ("alice", "bob", "carol"))


def test_the_official_openai_client_works_with_its_key_only(front: Front) -> None:
    def client(key: str) -> openai.OpenAI:
        pinned = ssl.create_default_context(cafile=front.ca)
        return openai.OpenAI(
            base_url=f"{front.url}/v1", api_key=key, max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=pinned, timeout=300),
        )  # fmt: skip

    good = client(front.key("bob"))
    assert MODEL in [m.id for m in good.models.list()]
    answer = good.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.choices[0].message.role == "assistant"
    with pytest.raises(openai.AuthenticationError):
        client("wrong-key-0123456789abcdefghij").models.list()


def test_nginx_runs_confined_and_unprivileged_after_binding(front: Front) -> None:
    score = front.host.ssh("systemd-analyze security --no-pager nginx.service | tail -n 1").stdout
    level = float(score.split("level for nginx.service:")[1].split()[0])
    assert level <= MAX_EXPOSURE, score
    users = front.host.ssh("ps -o user= -C nginx | sort -u").stdout.split()
    assert users == ["www-data"], users  # the master too: it binds with an ambient capability


def test_doctor_reports_the_front(front: Front, tmp_path: Path) -> None:
    inventory = front.work / "inventory.py"
    write_inventory(inventory, [front.host], {}, front.data)
    run_pyinfra(inventory, "deploys/doctor.py", env={"AUTOGLM_CHECKS_JSON": str(tmp_path)})
    (report,) = tmp_path.glob("*.doctor.json")
    rows = {c["name"]: c for c in json.loads(report.read_text())["checks"]}
    assert rows["TLS front"]["status"] == "ok", rows["TLS front"]
    assert rows["endpoint exposure"]["status"] == "ok", rows["endpoint exposure"]


def test_metrics_are_served_to_the_allowlisted_scraper_with_its_token(front: Front) -> None:
    url = f"https://{front.host.address}:{METRICS_PORT}/metrics/node"
    token = client_key_path(str(front.work / "secrets"), "prometheus", "scrapers")
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
    scraped = requests.get(url, headers=headers, verify=front.ca, timeout=60)
    assert scraped.status_code == 200 and "node_cpu_seconds_total" in scraped.text
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=scraped.text, capture_output=True, text=True
    )
    # promtool: 0 clean, 3 lint findings only, 1 unparsable. Debian's node exporter 1.5 has
    # naming-style findings of its own (node_memory_MemTotal_bytes is camelCase): only those
    findings = (check.stdout + check.stderr).splitlines()
    assert check.returncode in (0, 3), findings
    assert all(any(s in f for s in NODE_EXPORTER_STYLE) for f in findings if f), findings
    assert requests.get(url, verify=front.ca, timeout=60).status_code == 401
    client = {"Authorization": f"Bearer {front.key('alice')}"}
    assert requests.get(url, headers=client, verify=front.ca, timeout=60).status_code == 401
    other = requests.get(url.replace("/metrics/node", "/v1/models"), headers=headers,
                         verify=front.ca, timeout=60)  # fmt: skip
    assert other.status_code == 404
    # from the host's own address: a source outside serve_metrics_allow
    code = (
        "import ssl, urllib.request as u, urllib.error as e\n"
        f"r = u.Request({url!r}, headers={headers!r})\n"
        "try: u.urlopen(r, context=ssl._create_unverified_context(), timeout=30)\n"
        "except e.HTTPError as x: print(x.code)\n"
    )
    assert on_host(front.host, "python3 -", stdin=code).strip() == "403"
    with pytest.raises(OSError):  # the exporter itself listens on loopback only
        socket.create_connection((front.host.address, 9100), timeout=10).close()


def test_revoking_a_client_changes_only_the_key_map_and_reloads(front: Front) -> None:
    pid = front.nginx_pid()
    bob = front.key("bob")
    kept = [front.key("alice"), front.key("carol")]
    with ArgvWatch(front.host, kept) as watch:
        result = front.converge(serve_expose_clients=["alice", "carol"], extra=("-vvv",))
    assert result.returncode == 0, describe_failure(result)
    # the leak channels: argv on both sides, pyinfra's -vvv output and JSON, written files
    assert watch.host_hits.strip() == "" and watch.controller_hits == []
    assert ">>>" in result.stderr, "-vvv must show commands, or this check proves nothing"
    assert not any(k in result.stderr or k in json.dumps(result.report) for k in kept)
    holding = [line.split() for line in files_holding_secrets(front.host) if line]
    assert holding == [["640", "root", "/etc/nginx/autoglm/clients.map"]]
    assert [c.split(" on ")[0] for c in result.changed()] == [
        "Expose: /etc/nginx/autoglm/clients.map",
        "Expose: reload nginx.service (configuration or keys changed; in-flight requests finish)",
    ]
    assert front.get("/v1/models", bob).status_code == 401
    assert front.get("/v1/models", front.key("alice")).status_code == 200
    assert front.nginx_pid() == pid  # reloaded, not restarted


def test_rotating_a_key_changes_only_the_key_map_and_reloads(front: Front) -> None:
    old = front.key("carol")
    client_key_path(str(front.work / "secrets"), "carol").unlink()
    result = front.converge(serve_expose_clients=["alice", "carol"])
    assert result.returncode == 0, describe_failure(result)
    assert len(result.changed()) == 2 and "clients.map" in result.changed()[0]
    assert front.key("carol") != old
    assert front.get("/v1/models", old).status_code == 401
    assert front.get("/v1/models", front.key("carol")).status_code == 200


def test_a_preview_of_a_new_client_makes_nothing_anywhere(front: Front) -> None:
    before = front.host.ssh("md5sum /etc/nginx/autoglm/clients.map").stdout
    result = front.converge(serve_expose_clients=["alice", "carol", "dave"], extra=("--dry",))
    assert result.returncode == 0, describe_failure(result)
    assert not client_key_path(str(front.work / "secrets"), "dave").exists()
    assert front.host.ssh("md5sum /etc/nginx/autoglm/clients.map").stdout == before


def test_a_burst_over_the_limit_gets_429_with_retry_after(front: Front) -> None:
    key = front.key("alice")
    statuses = [front.get("/v1/models", key) for _ in range(12)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert limited[0].headers["Retry-After"] == "3"
    assert all(r.status_code in {200, 429} for r in statuses)


def test_exposure_on_loopback_is_refused_and_changes_nothing(front: Front) -> None:
    before = front.host.ssh("sha256sum /etc/nginx/nginx.conf /etc/nginx/autoglm/*").stdout
    result = front.converge(serve_expose="127.0.0.1:8443")
    assert result.returncode != 0
    assert "serve_expose" in result.stderr and "loopback" in result.stderr
    assert "Traceback" not in result.stderr
    assert front.host.ssh("sha256sum /etc/nginx/nginx.conf /etc/nginx/autoglm/*").stdout == before


def test_unsetting_the_exposure_withdraws_the_front(front: Front) -> None:
    result = front.converge(serve_expose=None, serve_metrics=None)
    assert result.returncode == 0, describe_failure(result)
    assert front.host.ssh("systemctl is-active nginx.service", check=False).stdout.strip() != (
        "active"
    )
    assert front.host.ssh("test -e /etc/nginx/autoglm || echo gone").stdout.strip() == "gone"
    with pytest.raises(requests.exceptions.ConnectionError):
        front.get("/v1/models", front.key("alice"))
    again = front.converge(serve_expose=None, serve_metrics=None)
    assert again.returncode == 0 and again.changed() == []


@pytest.fixture(scope="module")
def docker_front(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    standins: Standins,
    tmp_path_factory: pytest.TempPathFactory,
) -> Front:
    """Docker mode with the stand-in image (it answers /health and /v1/models, no chat)."""
    (host,) = sandbox_hosts(1, docker=True)
    # what the model stage leaves behind
    host.ssh("mkdir -p /srv/autoglm/models/AutoGLM-Phone-9B && echo {} > "
             "/srv/autoglm/models/AutoGLM-Phone-9B/config.json")  # fmt: skip
    work = tmp_path_factory.mktemp("expose-docker")
    data: dict[str, object] = {
        **docker_host_data(standins),
        "serve_expose": f"{host.address}:{PORT}",
        "serve_expose_clients": ["dora"],
        "serve_expose_secrets_dir": str(work / "secrets"),
    }
    made = Front(host, work, data, [])
    for _ in range(2):
        result = made.converge("deploys/docker.py", EXPOSE)
        assert result.returncode == 0, describe_failure(result)
        made.runs.append(result)
    return made


def test_docker_mode_is_fronted_the_same_way(docker_front: Front) -> None:
    assert docker_front.runs[1].changed() == []
    models = docker_front.get("/v1/models", docker_front.key("dora"))
    assert models.status_code == 200, models.text
    assert "autoglm-phone-9b" in models.text
    assert docker_front.get("/v1/models").status_code == 401
    assert docker_front.get("/v1/models", "wrong-key-0123456789abcdefghij").status_code == 401
    assert docker_front.get("/tokenize", docker_front.key("dora")).status_code == 404
    with pytest.raises(OSError):
        socket.create_connection((docker_front.host.address, 8000), timeout=10).close()
    # the engine's own key reached the front from the host's env file, never the controller
    auth = docker_front.host.ssh("stat -c '%a %U' /etc/nginx/autoglm/engine-auth.conf").stdout
    assert auth.split() == ["640", "root"]
