"""The serving engine's command line and environment, from settings. Pure: no pyinfra.

`vllm` (GPU hosts) follows Open-AutoGLM's recommended launch (README "Option B") through
`vllm serve`, with one deliberate change: `--allowed-local-media-path` is a dedicated
directory, never `/` (vLLM's help calls that option a security risk). `sglang` follows
Open-AutoGLM's SGLang launch (Chinese README) through `sglang serve`. `cpu` runs
`transformers serve` with the same endpoint surface (/health, /v1/models,
/v1/chat/completions) and model name, for GPU-less sandbox and Vagrant hosts.

The API key never appears here: the unit's wrapper exports it from the systemd
credential into `EngineCommand.key_env` (vLLM) or writes it into the private YAML file
`EngineCommand.key_config` that `--config` names (SGLang has no key variable) just before exec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from autoglm_infra.config.schema import Settings

# Open-AutoGLM: "please strictly follow the startup parameters we provide".
MM_PROCESSOR_KWARGS = {"max_pixels": 5000000}
# vLLM reads the key from this variable as an alternative to --api-key (which is argv).
VLLM_API_KEY_ENV = "VLLM_API_KEY"
# The unit's RuntimeDirectory= (/run/autoglm-serve): 0700, the service user's only.
RUNTIME_DIRECTORY = "autoglm-serve"
# SGLang 0.5.23 reads --api-key from argv or from a YAML file given with --config
# (srt/utils/server_args_config_parser.py: .yaml/.yml only; config first, argv overrides);
# it has no key variable. The wrapper writes `api-key: '<key>'` here (umask 077).
SGLANG_KEY_CONFIG = f"/run/{RUNTIME_DIRECTORY}/sglang-api-key.yaml"
# Open-AutoGLM's SGLang launch: --mm-process-config '{"image":{"max_pixels":5000000}}'.
SGLANG_MM_PROCESS_CONFIG = {"image": MM_PROCESSOR_KWARGS}
# The CPU engine reads local models through a hub-cache layout (see `HubAlias`).
CPU_HUB_REVISION = "0" * 40


@dataclass(frozen=True)
class HubAlias:
    """A hub-cache entry `models--<repo_id>` whose snapshot links to a local directory.

    `transformers serve` lists only hub-cache models in /v1/models and echoes the model
    argument as the model name, so the CPU engine serves `repo_id` (the served model
    name) from this layout instead of a bare path: clients then send the same `model`
    as they would to vLLM.
    """

    repo_id: str
    target: str
    revision: str = CPU_HUB_REVISION

    @property
    def repo_dir(self) -> str:
        return "models--" + self.repo_id.replace("/", "--")


@dataclass(frozen=True)
class EngineCommand:
    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    key_env: str | None = None  # variable the engine reads the API key from
    key_config: str | None = None  # or the YAML file (named in argv) the key is written to
    hub_alias: HubAlias | None = None


def served_model_name(settings: Settings) -> str:
    """serve_model_name, or the repository name in lower case (autoglm-phone-9b)."""
    return settings.serve_model_name or settings.model_repo.rsplit("/", 1)[-1].lower()


def _compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _endpoint_flags(settings: Settings) -> list[str]:
    """Served name and listen address: the same flag names in vLLM and SGLang."""
    return [
        "--served-model-name",
        served_model_name(settings),
        "--host",
        settings.serve_host,
        "--port",
        str(settings.serve_port),
    ]


def vllm_command(settings: Settings, venv: str) -> EngineCommand:
    """vLLM's OpenAI server with Open-AutoGLM's flags and the configured tuning.

    Started as `vllm serve <model>` (the venv's console script), vLLM's current entrypoint
    in every release the stack table knows; Open-AutoGLM's README still uses the
    deprecated `python -m vllm.entrypoints.openai.api_server --model <model>`, which takes
    the same flags. The Docker image's entrypoint is the same `vllm serve`."""
    argv = [
        f"{venv}/bin/vllm",
        "serve",
        settings.model_dir,
        *_endpoint_flags(settings),
        "--allowed-local-media-path",
        settings.serve_media_dir,
        "--mm-encoder-tp-mode",
        "data",
        "--mm-processor-cache-type",
        "shm",
        "--mm-processor-kwargs",
        _compact_json(MM_PROCESSOR_KWARGS),
        "--max-model-len",
        str(settings.vllm_max_model_len),
        "--chat-template-content-format",
        "string",
        "--limit-mm-per-prompt",
        _compact_json({"image": settings.vllm_max_images_per_prompt}),
        "--tensor-parallel-size",
        str(settings.vllm_tensor_parallel_size),
        "--gpu-memory-utilization",
        f"{settings.vllm_gpu_memory_utilization:g}",
        "--dtype",
        settings.serve_dtype,
        # verified safetensors only: never unpickle a .bin that slipped into the directory
        "--load-format",
        "safetensors",
    ]
    if settings.vllm_max_num_seqs is not None:
        argv += ["--max-num-seqs", str(settings.vllm_max_num_seqs)]
    if settings.vllm_enable_chunked_prefill is not None:
        on = settings.vllm_enable_chunked_prefill
        argv.append("--enable-chunked-prefill" if on else "--no-enable-chunked-prefill")
    argv += settings.serve_extra_args
    environment = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    return EngineCommand(argv, environment, key_env=VLLM_API_KEY_ENV)


def sglang_command(settings: Settings, venv: str) -> EngineCommand:
    """SGLang's OpenAI server with Open-AutoGLM's SGLang flags and the shared tuning keys.

    `sglang serve --model-path <model>` is the entrypoint SGLang 0.5.23 recommends
    (`python -m sglang.launch_server` still works and warns); flag names as in its
    srt/arg_groups/fields. vllm_max_model_len is the context length (--context-length),
    vllm_max_images_per_prompt the image limit (--limit-mm-data-per-request).
    vllm_gpu_memory_utilization is not mapped: SGLang's --mem-fraction-static covers weights
    and KV cache only (SGLang sizes it itself; set it with serve_extra_args).
    `--log-level warning`: at info SGLang 0.5.23 logs every server argument, the API key
    included, at start-up (sgl-project/sglang issue #37457)."""
    argv = [
        f"{venv}/bin/sglang",
        "serve",
        "--model-path",
        settings.model_dir,
        *_endpoint_flags(settings),
        "--context-length",
        str(settings.vllm_max_model_len),
        "--mm-enable-dp-encoder",
        "--mm-process-config",
        _compact_json(SGLANG_MM_PROCESS_CONFIG),
        "--limit-mm-data-per-request",
        _compact_json({"image": settings.vllm_max_images_per_prompt}),
        "--tp-size",
        str(settings.vllm_tensor_parallel_size),
        "--dtype",
        settings.serve_dtype,
        "--load-format",
        "safetensors",
        "--log-level",
        "warning",
        "--config",
        SGLANG_KEY_CONFIG,
    ]
    if settings.vllm_max_num_seqs is not None:
        argv += ["--max-running-requests", str(settings.vllm_max_num_seqs)]
    if settings.vllm_enable_chunked_prefill is False:
        argv += ["--chunked-prefill-size", "-1"]  # SGLang: -1 disables chunked prefill
    argv += settings.serve_extra_args
    return EngineCommand(argv, {}, key_config=SGLANG_KEY_CONFIG)


def cpu_command(settings: Settings, venv: str) -> EngineCommand:
    """`transformers serve` pinned to the model (loaded before it listens), on CPU.

    No continuous batching: on CPU it sizes its KV cache from free memory (4.6 GB for the
    tiny model). transformers serve has no API key option, so the key is not enforced.
    """
    name = served_model_name(settings)
    argv = [
        f"{venv}/bin/transformers",
        "serve",
        name,
        "--host",
        settings.serve_host,
        "--port",
        str(settings.serve_port),
        "--device",
        "cpu",
        "--dtype",
        settings.serve_dtype,
        "--no-continuous-batching",
        "--log-level",
        "info",
        *settings.serve_extra_args,
    ]
    threads = settings.serve_cpu_threads
    environment = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    return EngineCommand(
        argv, environment, key_env=None, hub_alias=HubAlias(name, settings.model_dir)
    )


def engine_command(settings: Settings, venv: str) -> EngineCommand:
    """The configured engine's command for a venv at `venv`."""
    if settings.serve_engine == "cpu":
        return cpu_command(settings, venv)
    if settings.serve_engine == "sglang":
        return sglang_command(settings, venv)
    return vllm_command(settings, venv)
