"""Engine command lines from settings: Open-AutoGLM's vLLM and SGLang flags, tuning keys, CPU
engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoglm_infra.config.schema import Settings
from autoglm_infra.config.validate import find_problems
from autoglm_infra.stages.service.engine_args import (
    SGLANG_KEY_CONFIG,
    VLLM_API_KEY_ENV,
    cpu_command,
    engine_command,
    served_model_name,
    sglang_command,
    vllm_command,
)

VENV = "/opt/autoglm/venv"


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def vllm(**data: Any) -> list[str]:
    return vllm_command(Settings(**data), VENV).argv


def test_vllm_defaults_follow_open_autoglm() -> None:
    argv = vllm()
    # `vllm serve <model>`: the current entrypoint (the api_server module is deprecated)
    assert argv[:3] == [f"{VENV}/bin/vllm", "serve", "/srv/autoglm/models/AutoGLM-Phone-9B"]
    assert "--model" not in argv
    assert flag(argv, "--served-model-name") == "autoglm-phone-9b"
    assert flag(argv, "--max-model-len") == "25480"
    assert flag(argv, "--chat-template-content-format") == "string"
    assert flag(argv, "--mm-encoder-tp-mode") == "data"
    assert flag(argv, "--mm-processor-cache-type") == "shm"
    assert json.loads(flag(argv, "--mm-processor-kwargs")) == {"max_pixels": 5000000}
    assert json.loads(flag(argv, "--limit-mm-per-prompt")) == {"image": 10}
    assert flag(argv, "--load-format") == "safetensors"
    assert "--trust-remote-code" not in argv


def test_vllm_binds_serve_host_and_port() -> None:
    argv = vllm(serve_host="::1", serve_port=9000)
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("::1", "9000")
    assert flag(vllm(), "--host") == "127.0.0.1"


def test_local_media_is_a_dedicated_directory_never_root() -> None:
    assert flag(vllm(), "--allowed-local-media-path") == "/srv/autoglm/media"
    assert flag(vllm(serve_media_dir="/data/shots"), "--allowed-local-media-path") == "/data/shots"
    problems = find_problems({"serve_media_dir": "/"})
    assert [p.key for p in problems] == ["serve_media_dir"]
    assert "must not be '/'" in problems[0].reason


def test_tuning_keys_become_flags() -> None:
    argv = vllm(
        vllm_tensor_parallel_size=2,
        vllm_gpu_memory_utilization=0.8,
        serve_dtype="bfloat16",
        vllm_max_num_seqs=16,
        vllm_enable_chunked_prefill=False,
        vllm_max_model_len=16384,
        vllm_max_images_per_prompt=3,
    )
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--gpu-memory-utilization") == "0.8"
    assert flag(argv, "--dtype") == "bfloat16"
    assert flag(argv, "--max-num-seqs") == "16"
    assert "--no-enable-chunked-prefill" in argv and "--enable-chunked-prefill" not in argv
    assert flag(argv, "--max-model-len") == "16384"
    assert json.loads(flag(argv, "--limit-mm-per-prompt")) == {"image": 3}
    assert "--enable-chunked-prefill" in vllm(vllm_enable_chunked_prefill=True)


def test_unset_tuning_keys_keep_vllm_defaults() -> None:
    argv = vllm()
    assert "--max-num-seqs" not in argv
    assert not any("chunked-prefill" in a for a in argv)


def test_extra_args_come_last_one_token_each() -> None:
    argv = vllm(serve_extra_args=["--enforce-eager", "--seed", "7"])
    assert argv[-3:] == ["--enforce-eager", "--seed", "7"]


def test_api_key_never_in_argv_only_named_env() -> None:
    command = vllm_command(Settings(), VENV)
    assert command.key_env == VLLM_API_KEY_ENV
    assert not any("api-key" in a or "API_KEY" in a for a in command.argv)
    assert command.environment["VLLM_NO_USAGE_STATS"] == "1"


@pytest.mark.parametrize(
    ("repo", "name", "expected"),
    [
        ("zai-org/AutoGLM-Phone-9B", None, "autoglm-phone-9b"),
        ("zai-org/AutoGLM-Phone-9B-Multilingual", None, "autoglm-phone-9b-multilingual"),
        ("zai-org/AutoGLM-Phone-9B", "phone", "phone"),
    ],
)
def test_served_model_name(repo: str, name: str | None, expected: str) -> None:
    assert served_model_name(Settings(model_repo=repo, serve_model_name=name)) == expected


def test_cpu_engine_serves_same_name_through_hub_alias() -> None:
    settings = Settings(serve_engine="cpu", model_dir="/srv/m/tiny", serve_port=8123)
    command = cpu_command(settings, VENV)
    assert command.argv[:3] == [f"{VENV}/bin/transformers", "serve", "autoglm-phone-9b"]
    assert flag(command.argv, "--device") == "cpu"
    assert flag(command.argv, "--port") == "8123"
    assert "--no-continuous-batching" in command.argv
    assert command.key_env is None
    assert command.hub_alias is not None
    assert command.hub_alias.repo_dir == "models--autoglm-phone-9b"
    assert command.hub_alias.target == "/srv/m/tiny"
    assert engine_command(settings, VENV) == command
    assert command.environment == {}  # torch's default: a thread per core


def test_cpu_engine_threads_are_omp_num_threads() -> None:
    settings = Settings(serve_engine="cpu", serve_cpu_threads=1)
    assert cpu_command(settings, VENV).environment == {"OMP_NUM_THREADS": "1"}


def test_engine_choice_defaults_to_vllm() -> None:
    assert engine_command(Settings(), VENV).argv[:2] == [f"{VENV}/bin/vllm", "serve"]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"serve_engine": "tgi"}, "serve_engine"),
        (
            {
                "serve_engine": "sglang",
                "serve_mode": "docker",
                "docker_image": "x:1@sha256:" + "a" * 64,
            },
            "serve_engine",
        ),
        ({"vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization"),
        ({"vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size"),
        ({"vllm_max_model_len": 10}, "vllm_max_model_len"),
        ({"serve_model_name": "has space"}, "serve_model_name"),
        ({"serve_extra_args": ["--a\n--b"]}, "serve_extra_args"),
        # the key never goes to argv, and SGLang's info log would print it
        ({"serve_extra_args": ["--api-key", "k"]}, "serve_extra_args"),
        ({"serve_extra_args": ["--api-key=k"]}, "serve_extra_args"),
        ({"serve_extra_args": ["--log-level", "info"]}, "serve_extra_args"),
        ({"serve_extra_args": ["--config", "/tmp/x.yaml"]}, "serve_extra_args"),
        ({"serve_dtype": "int4"}, "serve_dtype"),
        ({"serve_cpu_threads": 0}, "serve_cpu_threads"),
        ({"serve_cpu_threads": "many"}, "serve_cpu_threads"),
    ],
)
def test_bad_engine_settings_name_their_key(data: dict[str, Any], key: str) -> None:
    assert [p.key for p in find_problems(data)] == [key]


# -- SGLang ----------------------------------------------------------------------------------


def sglang(**data: Any) -> list[str]:
    return sglang_command(Settings(serve_engine="sglang", **data), VENV).argv


def test_sglang_uses_open_autoglms_flags_through_sglang_serve() -> None:
    """Open-AutoGLM (Chinese README): --served-model-name autoglm-phone-9b --context-length
    25480 --mm-enable-dp-encoder --mm-process-config '{"image":{"max_pixels":5000000}}'."""
    argv = sglang(model_dir="/srv/m", serve_port=8123)
    assert argv[:4] == [f"{VENV}/bin/sglang", "serve", "--model-path", "/srv/m"]
    assert flag(argv, "--served-model-name") == "autoglm-phone-9b"
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "8123")
    assert flag(argv, "--context-length") == "25480"
    assert "--mm-enable-dp-encoder" in argv
    assert json.loads(flag(argv, "--mm-process-config")) == {"image": {"max_pixels": 5000000}}
    assert json.loads(flag(argv, "--limit-mm-data-per-request")) == {"image": 10}
    assert (flag(argv, "--tp-size"), flag(argv, "--dtype")) == ("1", "auto")
    assert flag(argv, "--load-format") == "safetensors"
    assert engine_command(Settings(serve_engine="sglang"), VENV).argv[:2] == [
        f"{VENV}/bin/sglang",
        "serve",
    ]


def test_sglang_key_comes_from_a_config_file_and_start_up_logs_stay_at_warning() -> None:
    command = sglang_command(Settings(serve_engine="sglang"), VENV)
    assert command.key_env is None and command.key_config == SGLANG_KEY_CONFIG
    assert flag(command.argv, "--config") == SGLANG_KEY_CONFIG
    assert SGLANG_KEY_CONFIG.endswith(".yaml")  # SGLang refuses other suffixes
    assert flag(command.argv, "--log-level") == "warning"  # info logs the key (sglang #37457)
    assert not any("api-key" in a.removeprefix(SGLANG_KEY_CONFIG) for a in command.argv[:-1])


def test_sglang_tuning_keys_map_to_its_flags_and_extra_args_come_last() -> None:
    argv = sglang(
        vllm_tensor_parallel_size=2,
        vllm_max_num_seqs=16,
        vllm_enable_chunked_prefill=False,
        vllm_max_model_len=8192,
        serve_extra_args=["--mem-fraction-static", "0.8"],
    )
    assert (flag(argv, "--tp-size"), flag(argv, "--max-running-requests")) == ("2", "16")
    assert (flag(argv, "--chunked-prefill-size"), flag(argv, "--context-length")) == ("-1", "8192")
    assert argv[-2:] == ["--mem-fraction-static", "0.8"]
    assert "--max-running-requests" not in sglang()
    assert "--chunked-prefill-size" not in sglang(vllm_enable_chunked_prefill=True)
