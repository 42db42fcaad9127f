"""Keys of the OpenAI-compatible endpoint: how and where it is served, and by which engine.

The engine keys are shared by the venv (systemd) and Docker modes: both build the engine's
command line with `autoglm_infra.stages.service.engine_args`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from autoglm_infra.config.fields import AbsolutePath, Keys, ip_address, key

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def model_name(value: str) -> str:
    if not _MODEL_NAME.match(value):
        raise ValueError(
            "must be letters, digits, '.', '_' or '-' (the name clients send as 'model')"
        )
    return value


def media_dir(value: str) -> str:
    if value == "/":
        raise ValueError(
            "must not be '/': it lets API requests read any file the service can read; "
            "use a dedicated directory such as /srv/autoglm/media"
        )
    return value


def engine_version(value: str) -> str:
    if value != "auto" and not re.fullmatch(r"[0-9]+(\.[0-9A-Za-z]+)+", value):
        raise ValueError(
            "must be 'auto' or an engine release listed in stack/nvidia_stack.yaml, e.g. 0.33.0"
        )
    return value


# Flags the project sets itself, for the key's sake: a key in argv is readable by every
# user; SGLang's --config is the key file; at SGLang's info log level its start-up log
# prints every argument, the key included (sgl-project/sglang #37457).
MANAGED_FLAGS = {
    "--api-key": "the API key reaches the engine from the service credential, never argv",
    "--config": "the engine's config file carries the API key; it is written by the unit",
    "--log-level": "SGLang logs every argument, the API key included, below warning level",
}


def extra_arg(value: str) -> str:
    if not value or "\n" in value or "\x00" in value:
        raise ValueError("each extra argument must be a non-empty single-line string")
    flag = value.split("=", 1)[0]
    if flag in MANAGED_FLAGS:
        raise ValueError(
            f"{value!r} is set by this project: {MANAGED_FLAGS[flag]}; remove it "
            "(service_api_key_file sets the key)"
        )
    return value


class ServingKeys(Keys):
    serve_mode: Literal["venv", "docker"] = key(
        "venv", "Run the model server from a venv under systemd, or in Docker.", "venv | docker"
    )
    serve_host: Annotated[str, AfterValidator(ip_address)] = key(
        "127.0.0.1",
        "Address the OpenAI-compatible endpoint binds to; loopback unless a proxy fronts it.",
        "an IPv4/IPv6 address",
    )
    serve_port: Annotated[int, Field(ge=1, le=65535)] = key(
        8000, "TCP port of the OpenAI-compatible endpoint.", "integer 1-65535"
    )
    serve_engine: Literal["vllm", "sglang", "cpu"] = key(
        "vllm",
        "Serving engine: vLLM or SGLang on GPU hosts; cpu (`transformers serve`) for GPU-less "
        "test hosts.",
        "vllm | sglang | cpu",
    )
    serve_engine_version: Annotated[str, AfterValidator(engine_version)] = key(
        "auto",
        "Engine release (stack/nvidia_stack.yaml): 'auto' takes the newest default candidate "
        "that fits the host (vLLM 0.33.0 on CUDA 13 / Turing+, else 0.19.1; SGLang 0.5.23); "
        "0.12.0 is Open-AutoGLM's README stack.",
        "auto | a release of serve_engine in stack/nvidia_stack.yaml (vllm: 0.33.0, 0.19.1, "
        "0.12.0, 0.34.0; sglang: 0.5.23)",
    )
    serve_model_name: Annotated[str, AfterValidator(model_name)] | None = key(
        None,
        "Model name clients send; None derives it from model_repo (autoglm-phone-9b).",
        "name of letters, digits, . _ - or None",
    )
    serve_dtype: Literal["auto", "bfloat16", "float16", "float32"] = key(
        "auto", "Weight and activation dtype of the engine.", "auto | bfloat16 | float16 | float32"
    )
    serve_media_dir: Annotated[AbsolutePath, AfterValidator(media_dir)] = key(
        "/srv/autoglm/media",
        "The only host directory API requests may read local images from (never /).",
        "absolute path other than /",
    )
    serve_cpu_threads: Annotated[int, Field(ge=1, le=1024)] | None = key(
        None,
        "Compute threads of the cpu engine (OMP_NUM_THREADS); None keeps torch's default, "
        "one per core. Test hosts that share one machine's cores answer far sooner with 1: "
        "several engines each spinning one thread per core slow each other down many times.",
        "integer 1-1024 or None (read by the cpu engine in venv mode only)",
    )
    serve_extra_args: list[Annotated[str, AfterValidator(extra_arg)]] = key(
        [],
        "Extra engine arguments, one token per item, appended after the generated ones.",
        "list of strings",
    )
    vllm_tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] = key(
        1, "GPUs one model replica is split over (--tensor-parallel-size).", "integer 1-64"
    )
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = key(
        0.9, "Fraction of GPU memory vLLM may use (--gpu-memory-utilization).", "number in (0, 1]"
    )
    vllm_max_model_len: Annotated[int, Field(ge=256)] = key(
        25480, "Context length (--max-model-len); Open-AutoGLM recommends 25480.", "integer >= 256"
    )
    vllm_max_num_seqs: Annotated[int, Field(ge=1)] | None = key(
        None,
        "Concurrent sequences (--max-num-seqs); None keeps vLLM's default.",
        "integer >= 1 or None",
    )
    vllm_enable_chunked_prefill: bool | None = key(
        None,
        "Chunked prefill on/off (--[no-]enable-chunked-prefill); None keeps vLLM's default.",
        "true | false | None",
    )
    vllm_max_images_per_prompt: Annotated[int, Field(ge=1, le=100)] = key(
        10, "Images allowed per prompt (--limit-mm-per-prompt).", "integer 1-100"
    )
