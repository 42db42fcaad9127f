"""The stand-in's `sglang serve`: SGLang 0.5.23's flags, config file, logging and HTTP API,
answered by a transformers model on CPU (the sandbox has no GPU).

Modelled on the sglang-0.5.23 wheel from PyPI (read 2026-12-05), file by file:

- srt/server_args.py `prepare_server_args`: argparse, `--config` merged by
  srt/utils/server_args_config_parser.py (a .yaml/.yml file that exists, a mapping at
  the root; its options go before the command line, so the command line wins), then
  `logging.basicConfig(format="[%(asctime)s] %(message)s", force=True)` at --log-level;
- srt/entrypoints/engine.py: logs `server_args=...` at INFO, api_key included
  (sgl-project/sglang issue #37457);
- srt/arg_groups/fields/*: flag names and defaults (--host 127.0.0.1, --port 30000,
  --tp-size alias --tensor-parallel-size, --model-path alias --model);
- srt/utils/auth.py: with --api-key every route needs `Authorization: Bearer <key>`
  except /health*, /ready*, /metrics*; refusals are 401 {"error": "Unauthorized"};
- srt/entrypoints/http_server.py: /health and /health_generate answer 503 while the
  server starts, 200 once it is up; /v1/models lists ModelCard(id=root=served name,
  owned_by "sglang", max_model_len); /v1/chat/completions (OpenAI format with usage);
  "The server is fired up and ready to roll!" at INFO once ready;
- srt/configs/model_config.py: a --context-length above the model's is a ValueError.

Not modelled: GPUs, batching, multimodal inputs, streaming, the other ~400 flags (an
unknown flag is refused, as argparse refuses it in the real one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

logger = logging.getLogger("sglang.srt.entrypoints.engine")

OPEN_PREFIXES = ("/health", "/ready", "/metrics")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglang serve")
    add = parser.add_argument
    add("--model-path", "--model", dest="model_path", required=True)
    add("--served-model-name", default=None)
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=30000)
    add("--api-key", default=None)
    add("--context-length", type=int, default=None)
    add("--mm-enable-dp-encoder", action=argparse.BooleanOptionalAction, default=None)
    add("--mm-process-config", type=json.loads, default=None)
    add("--limit-mm-data-per-request", type=json.loads, default=None)
    add("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int, default=1)
    add("--dtype", choices=DTYPES, default="auto")
    add("--load-format", default="auto")
    add("--log-level", default="info")
    add("--max-running-requests", type=int, default=None)
    add("--chunked-prefill-size", type=int, default=None)
    add("--mem-fraction-static", type=float, default=None)
    add("--random-seed", type=int, default=None)
    add("--trust-remote-code", action="store_true")
    add("--config", default=None)
    return parser


def merge_config(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """ConfigArgumentMerger.merge_config_with_args: config options first, argv after."""
    if "--config" not in argv:
        return argv
    if argv.count("--config") > 1:
        raise ValueError("Multiple config files specified! Only one allowed.")
    index = argv.index("--config")
    if index == len(argv) - 1:
        raise ValueError("No config file specified after --config flag!")
    path = Path(argv[index + 1])
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"Config file must be YAML format, got: {path.suffix}")
    if not path.exists():
        raise ValueError(f"Config file not found: {path}")
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError("Config file must contain a dictionary at root level")
    flags = {a.dest: a for a in parser._actions}
    merged: list[str] = []
    for key, value in data.items():
        name = "--" + str(key).replace("_", "-")
        action = flags.get(str(key).replace("-", "_"))
        if isinstance(action, argparse._StoreTrueAction):
            merged += [name] if value else []
        else:
            merged += [name, value if isinstance(value, str) else json.dumps(value)]
    return merged + argv[:index] + argv[index + 2 :]


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.served_name: str = args.served_model_name or args.model_path
        self.ready = False
        self.model: Any = None
        self.tokenizer: Any = None
        self.context_length = 0
        self.lock = threading.Lock()


def _generate(state: State, body: dict[str, Any]) -> dict[str, Any]:
    import torch

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 32)
    prompt = state.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_len = int(prompt["input_ids"].shape[-1])
    with state.lock, torch.no_grad():
        out = state.model.generate(**prompt, max_new_tokens=max_tokens, do_sample=False)
    new = out[0][prompt_len:]
    text = state.tokenizer.decode(new, skip_special_tokens=True)
    eos = state.tokenizer.eos_token_id
    finish = "stop" if len(new) and int(new[-1]) == eos else "length"
    return {
        "id": uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or state.served_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "reasoning_content": None,
                            "tool_calls": None},
                "logprobs": None,
                "finish_reason": finish,
                "matched_stop": eos if finish == "stop" else None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_len,
            "total_tokens": prompt_len + len(new),
            "completion_tokens": len(new),
            "prompt_tokens_details": None,
        },
    }  # fmt: skip


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "uvicorn"

        def log_message(self, format: str, *args: Any) -> None:
            logging.getLogger("uvicorn.access").info(format, *args)

        def _send(self, status: int, payload: object = None) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            key = state.args.api_key
            if not key or self.path.startswith(OPEN_PREFIXES):
                return True
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            return scheme.lower() == "bearer" and token == key

        def do_GET(self) -> None:
            if not self._authorized():
                return self._send(401, {"error": "Unauthorized"})
            path = self.path.split("?", 1)[0]
            if path in ("/health", "/health_generate"):
                return self._send(200 if state.ready else 503)
            if path == "/v1/models":
                card = {"id": state.served_name, "object": "model", "created": int(time.time()),
                        "owned_by": "sglang", "root": state.served_name, "parent": None,
                        "max_model_len": state.context_length}  # fmt: skip
                return self._send(200, {"object": "list", "data": [card]})
            return self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            if not self._authorized():
                return self._send(401, {"error": "Unauthorized"})
            if self.path.split("?", 1)[0] != "/v1/chat/completions":
                return self._send(404, {"detail": "Not Found"})
            if not state.ready:
                return self._send(503, {"error": "server is starting"})
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                return self._send(200, _generate(state, body))
            except (ValueError, TypeError) as exc:
                error = {"object": "error", "message": str(exc), "type": "BadRequestError",
                         "code": 400}  # fmt: skip
                return self._send(400, error)

    return Handler


def _load(state: State) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = state.args
    dtype = {"half": "float16", "float": "float32"}.get(args.dtype, args.dtype)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    state.tokenizer = AutoTokenizer.from_pretrained(args.model_path, local_files_only=True)
    state.model = AutoModelForCausalLM.from_pretrained(
        args.model_path,
        dtype=torch_dtype,
        local_files_only=True,
        use_safetensors=args.load_format in ("auto", "safetensors") or None,
    )
    state.model.eval()
    config_len = int(getattr(state.model.config, "max_position_embeddings", 0) or 0)
    if args.context_length and config_len and args.context_length > config_len:
        # srt/configs/model_config.py: refused unless SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN
        raise ValueError(
            f"Warning: User-specified context_length ({args.context_length}) is greater than "
            f"the derived context_length ({config_len}). This may lead to incorrect model "
            "outputs or CUDA errors. Note that the derived context_length may differ from "
            "max_position_embeddings in the model's config. To allow overriding this maximum, "
            "set the env var SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1"
        )
    state.context_length = args.context_length or config_len


def serve(argv: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(merge_config(list(argv), parser))
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="[%(asctime)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        force=True,
    )
    # as SGLang 0.5.23 logs it: every argument, the API key included (issue #37457)
    logger.info(
        "server_args=ServerArgs(%s)", ", ".join(f"{k}={v!r}" for k, v in vars(args).items())
    )
    state = State(args)
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        _load(state)
    except Exception as exc:  # the real server dies with the loader's error too
        logging.getLogger("sglang.srt.managers.scheduler").error(
            f"Scheduler hit an exception: {exc}"
        )
        httpd.shutdown()
        sys.exit(1)
    state.ready = True
    logging.getLogger("sglang.srt.entrypoints.http_server").info(
        "The server is fired up and ready to roll!"
    )
    threading.Event().wait()
