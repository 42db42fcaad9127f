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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from autoglm_infra.stages.expose.clients import client_key_path
from autoglm_testbed.converge import ConvergeResult, describe_failure, run_pyinfra
from autoglm_testbed.hosts import SandboxHost, write_inventory
from autoglm_testbed.world import Standins, full_group_data

STAGES = ("deploys/python_env.py", "deploys/model.py", "deploys/service.py")
EXPOSE = "deploys/expose.py"
PORT = 8443
MODEL = "tiny-model"
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

    def converge(self, *deploys: str, **changes: object) -> ConvergeResult:
        inventory = self.work / "inventory.py"
        write_inventory(inventory, [self.host], {}, {**self.data, **changes})
        return run_pyinfra(inventory, *(deploys or (EXPOSE,)))

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


def test_keys_stay_out_of_output_argv_and_readable_files(front: Front) -> None:
    keys = [front.key(c) for c in ("alice", "bob", "carol")]
    output = "".join(json.dumps(r.report) + r.stderr for r in front.runs)
    assert not any(k in output for k in keys)
    listing = front.host.ssh("stat -c '%a %U %G %n' /etc/nginx/autoglm /etc/nginx/autoglm/*")
    for line in listing.stdout.splitlines():
        mode, owner, group, path = line.split()
        if not path.endswith(".crt"):
            assert (mode, owner, group) in {("600", "root", "root"), ("700", "root", "root")}, line
    argv = front.host.ssh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout
    assert not any(k in argv for k in keys)
    on_host = front.host.ssh("grep -rlF -e " + " -e ".join(keys) + " /etc /run /var/log || true")
    assert on_host.stdout.split() == ["/etc/nginx/autoglm/clients.map"]


def test_revoking_a_client_changes_only_the_key_map_and_reloads(front: Front) -> None:
    pid = front.nginx_pid()
    bob = front.key("bob")
    result = front.converge(serve_expose_clients=["alice", "carol"])
    assert result.returncode == 0, describe_failure(result)
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
