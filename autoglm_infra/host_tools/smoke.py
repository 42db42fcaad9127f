"""Smoke test of the OpenAI-compatible endpoint, run ON the host (standard library only).

The endpoint listens on loopback, so the controller cannot reach it; pyinfra uploads this
file and runs it with the host's python3. Exit 0 and one JSON line when healthy:
/health answers, /v1/models lists the served name, one real chat completion returns text
(with --expect-reasoning, a non-trivial <think> block, as Open-AutoGLM's own checker
expects from the real model). 429/503 and dropped connections are retried with
exponential backoff (1 s, doubling). The API key is read from a file, never from argv.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

RETRY_STATUS = {429, 502, 503, 504}
MIN_REASONING_CHARS = 40  # a "very short chain of thought" means a broken deployment
PROMPT = "Reply with one short sentence: what is 2 + 3?"


# Why it failed, for the doctor's fix: nothing listens, the key file is missing or
# unreadable, the server refused the key, or anything else went wrong.
NO_LISTENER, KEY_FILE, KEY_REFUSED, BROKEN = "no-listener", "key-file", "key-refused", "broken"


class SmokeError(Exception):
    def __init__(self, message: str, kind: str = BROKEN) -> None:
        super().__init__(message)
        self.kind = kind


def _refused(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, ConnectionRefusedError)


def with_backoff(call: Callable[[], Any], tries: int, first_delay: float = 1.0) -> Any:
    delay = first_delay
    for attempt in range(1, tries + 1):
        try:
            return call()
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUS or attempt == tries:
                kind = KEY_REFUSED if exc.code in (401, 403) else BROKEN
                raise SmokeError(f"HTTP {exc.code} from {exc.url}", kind) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            if attempt == tries:
                kind = NO_LISTENER if _refused(exc) else BROKEN
                raise SmokeError(f"no answer: {getattr(exc, 'reason', exc)}", kind) from None
        time.sleep(delay)
        delay *= 2
    raise SmokeError("unreachable")


def request(url: str, key: str | None, body: dict[str, Any] | None, timeout: float) -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as response:
        raw = response.read()
    if url.endswith("/health"):
        return {}  # engines answer 200 with an empty or plain-text body
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise SmokeError(f"{url} answered with something that is not JSON: {raw[:80]!r}") from None


def reasoning_of(message: dict[str, Any]) -> str:
    """The chain of thought: a reasoning field, or the <think> block in the content."""
    for field in ("reasoning_content", "reasoning"):
        if isinstance(message.get(field), str) and message[field].strip():
            return str(message[field]).strip()
    content = str(message.get("content") or "")
    if "<think>" in content:
        return content.split("<think>", 1)[1].split("</think>", 1)[0].strip()
    return ""


def check_completion(reply: dict[str, Any], expect_reasoning: bool) -> str:
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise SmokeError(f"chat completion has no choices[0].message: {str(reply)[:200]}") from None
    content = str(message.get("content") or "").strip()
    if not content and not reasoning_of(message):
        raise SmokeError("chat completion returned empty text")
    if expect_reasoning:
        thought = reasoning_of(message)
        if len(thought) < MIN_REASONING_CHARS:
            raise SmokeError(
                f"reasoning block is {len(thought)} characters (< {MIN_REASONING_CHARS}): "
                "a very short or missing chain of thought means a broken deployment "
                "(wrong weights, chat template or engine flags)"
            )
    return content


def read_key(path: str) -> str:
    """A plain key file, or an env file (Docker's --env-file) holding VLLM_API_KEY=..."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError as exc:
        raise SmokeError(f"API key file {path}: {exc.strerror or exc}", KEY_FILE) from None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "VLLM_API_KEY":
            return value.strip()
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--key-file", help="file holding the API key (root-only)")
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--first-delay", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--expect-reasoning", action="store_true")
    parser.add_argument("--no-chat", action="store_true", help="only /health and /v1/models")
    args = parser.parse_args(argv)
    base = args.base_url.rstrip("/")
    try:
        key_error: SmokeError | None = None
        try:
            key = read_key(args.key_file) if args.key_file else None
        except SmokeError as exc:  # reported after /health: no listener is the first problem
            key, key_error = None, exc
        started = time.monotonic()
        try:
            with_backoff(
                lambda: request(f"{base}/health", key, None, 10), args.tries, args.first_delay
            )
        except SmokeError as exc:  # a /health behind the key: the key file is the problem
            raise key_error if key_error and exc.kind == KEY_REFUSED else exc from None
        if key_error is not None:
            raise key_error
        models = with_backoff(
            lambda: request(f"{base}/v1/models", key, None, 10), args.tries, args.first_delay
        )
        served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
        if args.model not in served:
            raise SmokeError(f"/v1/models lists {served}, not the served name {args.model!r}")
        if args.no_chat:
            print(json.dumps({"ok": True, "models": served}))
            return 0
        body = {
            "model": args.model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": args.max_tokens,
            "temperature": 0.0,
        }
        chat_started = time.monotonic()
        reply = with_backoff(
            lambda: request(f"{base}/v1/chat/completions", key, body, args.timeout),
            args.tries,
            args.first_delay,
        )
        content = check_completion(reply, args.expect_reasoning)
        latency = time.monotonic() - chat_started
    except SmokeError as exc:
        print(json.dumps({"ok": False, "error": str(exc), "kind": exc.kind}))
        return 1
    result = {
        "ok": True,
        "models": served,
        "chat_latency_s": round(latency, 3),
        "total_s": round(time.monotonic() - started, 3),
        "answer": content[:120],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
