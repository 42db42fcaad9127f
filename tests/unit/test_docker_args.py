"""The hardened `docker run` argv: every flag from settings, nothing unsafe, stable hash."""

from __future__ import annotations

from typing import Any

import pytest

from autoglm_infra.config.schema import Settings
from autoglm_infra.stages.docker.args import (
    SPEC_LABEL,
    api_key_path,
    generate_key_file_command,
    gpus_arg,
    key_file_content,
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


def test_secret_mount_keeps_the_key_out_of_env_and_loads_it_before_the_entrypoint() -> None:
    argv = argv_for(docker_api_key_delivery="secret-mount")
    mount = "--mount=type=bind,src=/etc/autoglm/docker-api-key,dst=/run/secrets/autoglm-api-key"
    assert f"{mount},readonly" in argv
    assert not any(a.startswith("--env-file") for a in argv)
    image_at = argv.index(IMAGE)
    assert argv[image_at - 1] == "--entrypoint=/bin/sh"
    loader = argv[image_at + 2]
    assert argv[image_at + 1] == "-c" and "cat /run/secrets/autoglm-api-key" in loader
    assert loader.endswith('exec "$@"') and "|| exit 1" in loader
    # $0, then the image's entrypoint and the usual arguments
    assert argv[image_at + 3 : image_at + 7] == [
        "autoglm-serve",
        "vllm",
        "serve",
        "/models/autoglm",
    ]


def test_secret_mount_with_custom_entrypoint_and_command() -> None:
    argv = argv_for(
        docker_api_key_delivery="secret-mount", docker_entrypoint=[], docker_command=["/bin/x"]
    )
    assert argv[-2:] == ["autoglm-serve", "/bin/x"]


def test_env_file_spec_hash_is_unchanged_by_the_delivery_keys() -> None:
    """Existing env-file containers keep their spec hash (no restart on upgrade)."""
    settings = Settings.model_validate({"serve_mode": "docker", "docker_image": IMAGE})
    assert spec_hash(spec_from_settings(settings)) == spec_hash(
        spec_from_settings(settings.model_copy(update={"docker_entrypoint": ["other"]}))
    )
    mount = settings.model_copy(update={"docker_api_key_delivery": "secret-mount"})
    assert spec_hash(spec_from_settings(mount)) != spec_hash(spec_from_settings(settings))


def test_key_file_helpers() -> None:
    assert api_key_path("secret-mount") == "/etc/autoglm/docker-api-key"
    assert api_key_path("env-file") == "/etc/autoglm/docker-engine.env"
    assert key_file_content("sk-1") == b"sk-1\n"
    for bad in ("", "a\nb"):
        with pytest.raises(ValueError, match="one non-empty line"):
            key_file_content(bad)
    command = generate_key_file_command("/etc/autoglm/docker-api-key")
    assert "chmod 440" in command and "/dev/urandom" in command and "umask 077" in command
