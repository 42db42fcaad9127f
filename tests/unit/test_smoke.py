"""The on-host smoke test against a real HTTP server on loopback, with faults."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from autoglm_infra.host_tools import smoke

THOUGHT = "The user asks for 2 + 3. Adding two and three gives five, so the answer is 5."


class Endpoint(ThreadingHTTPServer):
    fail_first = 0  # answer this many requests with 503 first
    key = "k-123"
    think = THOUGHT
    seen_auth: list[str]


class Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _gate(self) -> bool:
        self.server.seen_auth.append(self.headers.get("Authorization", ""))
        if self.server.fail_first > 0:
            self.server.fail_first -= 1
            self._reply(503, {"error": "loading"})
            return False
        if self.headers.get("Authorization") != f"Bearer {self.server.key}":
            self._reply(401, {"error": "bad key"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._gate():
            return
        if self.path == "/health":
            self.send_response(200)  # plain text, as busybox or some engines answer
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")
        else:
            self._reply(200, {"data": [{"id": "autoglm-phone-9b"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if not self._gate():
            return
        content = f"<think>{self.server.think}</think>5"
        self._reply(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[Endpoint, list[str]]]:
    server = Endpoint(("127.0.0.1", 0), Handler)
    server.seen_auth = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    key_file = tmp_path / "key"
    key_file.write_text("k-123\n")
    base = ["--base-url", f"http://127.0.0.1:{server.server_address[1]}", "--key-file"]
    yield server, [*base, str(key_file), "--model", "autoglm-phone-9b", "--first-delay", "0.01"]
    server.shutdown()
    server.server_close()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    rc = smoke.main(args)
    return rc, json.loads(capsys.readouterr().out)


def test_healthy_endpoint_passes_with_reasoning(endpoint, capsys) -> None:  # type: ignore[no-untyped-def]
    server, args = endpoint
    rc, result = run([*args, "--expect-reasoning"], capsys)
    assert rc == 0 and result["ok"] and result["answer"].endswith("5")
    assert set(server.seen_auth) == {"Bearer k-123"}


def test_503_is_retried_with_backoff(endpoint, capsys) -> None:  # type: ignore[no-untyped-def]
    server, args = endpoint
    server.fail_first = 2
    rc, result = run(args, capsys)
    assert rc == 0, result


def test_503_beyond_the_tries_fails_clearly(endpoint, capsys) -> None:  # type: ignore[no-untyped-def]
    server, args = endpoint
    server.fail_first = 5
    rc, result = run([*args, "--tries", "2"], capsys)
    assert rc == 1 and "HTTP 503" in result["error"]


def test_short_reasoning_means_broken_deployment(endpoint, capsys) -> None:  # type: ignore[no-untyped-def]
    server, args = endpoint
    server.think = "5"
    rc, result = run([*args, "--expect-reasoning"], capsys)
    assert rc == 1 and "broken deployment" in result["error"]


def test_wrong_key_and_wrong_served_name(endpoint, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server, args = endpoint
    server.key = "other"
    rc, result = run(args, capsys)
    assert rc == 1 and "HTTP 401" in result["error"]
    server.key = "k-123"
    rc, result = run([*args, "--model", "glm"], capsys)  # the last --model wins
    assert rc == 1 and "not the served name 'glm'" in result["error"]


def test_key_from_a_docker_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "engine.env"
    env_file.write_text("HF_HUB_OFFLINE=1\nVLLM_API_KEY=k-9\n")
    plain = tmp_path / "key"
    plain.write_text("k-9\n")
    assert smoke.read_key(str(env_file)) == smoke.read_key(str(plain)) == "k-9"


def test_result_line_is_found_among_noise() -> None:
    from autoglm_infra.stages.verify.ops import parse_smoke

    assert parse_smoke('warning: x\n{"ok": true, "models": ["m"]}\n') == {
        "ok": True,
        "models": ["m"],
    }
    broken = parse_smoke("Traceback (most recent call last):\n  boom")
    assert broken["ok"] is False and "printed no result" in broken["error"]


def test_failure_kinds_tell_listener_key_file_refused_key_and_the_rest(
    endpoint, capsys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    server, args = endpoint
    missing = [*args, "--key-file", str(tmp_path / "absent")]  # the last --key-file wins
    rc, result = run(missing, capsys)
    assert rc == 1 and result["kind"] == "key-file" and "absent" in result["error"]
    server.key = "other"
    assert run(args, capsys)[1]["kind"] == "key-refused"
    server.key = "k-123"
    assert run([*args, "--model", "glm"], capsys)[1]["kind"] == "broken"
    server.shutdown()
    server.server_close()  # nothing listens on that port now
    rc, result = run([*missing, "--tries", "1"], capsys)
    assert rc == 1 and result["kind"] == "no-listener", result
