"""The hardened `docker run` argv: every flag from settings, nothing unsafe, stable hash."""

from __future__ import annotations

from typing import Any

import pytest

from autoglm_infra.config.schema import Settings
from autoglm_infra.docker_args import (
    SPEC_LABEL,
    gpus_arg,
    publish_arg,
    run_argv,
    spec_from_settings,
    spec_hash,
)

IMAGE = "vllm/vllm-openai:v0.12.0@sha256:" + "ab" * 32


def argv_for(**data: Any) -> list[str]:
    settings = Settings.model_validate({"serve_mode": "docker", "docker_image": IMAGE, **data})
    return run_argv(spec_from_settings(settings))


def test_default_argv_has_every_hardening_flag() -> None:
    argv = argv_for()
    assert argv[:3] == ["/usr/bin/docker", "run", "--rm"]
    for flag in (
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges:true",
        "--user=2000:0",
        "--pids-limit=4096",
        "--memory=64g",
        "--memory-swap=64g",
        "--cpus=8",
        "--shm-size=16g",
        "--tmpfs=/tmp:rw,nosuid,nodev,exec,size=4g",
        "--mount=type=volume,src=autoglm-cache,dst=/home/vllm/.cache",
        "--mount=type=bind,src=/srv/autoglm/models/AutoGLM-Phone-9B,dst=/models/autoglm,readonly",
        "--publish=127.0.0.1:8000:8000",
        '--gpus="device=0"',
        "--env-file=/etc/autoglm/docker-engine.env",
        "--health-start-period=900s",
    ):
        assert flag in argv, flag
    assert any(a.startswith("--health-cmd=python3 -c") and "/health" in a for a in argv)
    assert argv[argv.index(IMAGE) + 1] == "/models/autoglm"


def test_argv_never_has_unsafe_flags() -> None:
    joined = " ".join(argv_for(docker_gpu_devices=["all"]))
    unsafe = ("--privileged", "--ipc=host", "--network=host", "--pid=host", "unconfined",
              "--cap-add", "--restart", "--allowed-local-media-path", "VLLM_API_KEY")  # fmt: skip
    for bad in unsafe:
        assert bad not in joined


def test_image_is_the_pinned_reference_and_label_carries_spec_hash() -> None:
    settings = Settings.model_validate({"serve_mode": "docker", "docker_image": IMAGE})
    spec = spec_from_settings(settings)
    argv = run_argv(spec)
    assert IMAGE in argv
    assert f"--label={SPEC_LABEL}={spec_hash(spec)}" in argv


def test_spec_hash_changes_with_a_flag_and_only_then() -> None:
    base = Settings.model_validate({"serve_mode": "docker", "docker_image": IMAGE})
    same = Settings.model_validate({"serve_mode": "docker", "docker_image": IMAGE})
    other = Settings.model_validate(
        {"serve_mode": "docker", "docker_image": IMAGE, "docker_memory": "32g"}
    )
    assert spec_hash(spec_from_settings(base)) == spec_hash(spec_from_settings(same))
    assert spec_hash(spec_from_settings(base)) != spec_hash(spec_from_settings(other))


def test_memory_swap_defaults_to_memory_and_can_be_raised() -> None:
    assert "--memory-swap=8g" in argv_for(docker_memory="8g")
    assert "--memory-swap=12g" in argv_for(docker_memory="8g", docker_memory_swap="12g")


def test_tmp_noexec_when_asked() -> None:
    assert "--tmpfs=/tmp:rw,nosuid,nodev,noexec,size=4g" in argv_for(docker_tmp_exec=False)


@pytest.mark.parametrize(
    ("devices", "expected"),
    [([], []), (["all"], ["--gpus=all"]), (["0"], ['--gpus="device=0"']),
     (["0", "1"], ['--gpus="device=0,1"'])],
)  # fmt: skip
def test_gpus_limited_to_configured_devices(devices: list[str], expected: list[str]) -> None:
    assert gpus_arg(devices) == expected
    assert [a for a in argv_for(docker_gpu_devices=devices) if a.startswith("--gpus")] == expected


def test_publish_binds_serve_host_including_ipv6() -> None:
    assert publish_arg("127.0.0.1", 8000) == "--publish=127.0.0.1:8000:8000"
    assert publish_arg("::1", 9000) == "--publish=[::1]:9000:9000"
    assert "--publish=10.0.0.5:8080:8080" in argv_for(serve_host="10.0.0.5", serve_port=8080)


def test_custom_command_and_health_cmd_replace_the_defaults() -> None:
    argv = argv_for(docker_command=["/bin/httpd", "-f"], docker_health_cmd="true")
    assert argv[-3:] == [IMAGE, "/bin/httpd", "-f"]
    assert "--health-cmd=true" in argv


def test_default_command_binds_inside_the_container_on_serve_port() -> None:
    argv = argv_for(serve_port=8123)
    tail = argv[argv.index(IMAGE) + 1 :]
    assert tail[tail.index("--port") + 1] == "8123"
    assert tail[tail.index("--host") + 1] == "0.0.0.0"
    assert "--mm_processor_cache_type" in tail
