"""Docker keys: digest pinning, sizes, user, GPUs and cross-key checks name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.config.validate import find_problems

IMAGE = "vllm/vllm-openai:v0.12.0@sha256:" + "ab" * 32
IMAGE_ID = "sha256:" + "cd" * 32


def problems(**data: Any) -> dict[str, str]:
    return {p.key: p.reason for p in find_problems({"serve_mode": "docker", **data})}


def test_valid_docker_settings_have_no_problems() -> None:
    assert problems(docker_image=IMAGE) == {}
    assert problems(docker_image="registry.local:5000/team/vllm@sha256:" + "0" * 64) == {}
    assert problems(docker_image=IMAGE_ID, docker_image_tarball="/srv/images/vllm.tar") == {}


def test_venv_mode_needs_no_image() -> None:
    assert find_problems({"serve_mode": "venv"}) == []


@pytest.mark.parametrize(
    "image",
    ["vllm/vllm-openai:v0.12.0", "vllm/vllm-openai:latest", "vllm@sha256:abc",
     "VLLM/x@sha256:" + "0" * 64],
)  # fmt: skip
def test_unpinned_images_are_refused(image: str) -> None:
    assert "pinned by digest" in problems(docker_image=image)["docker_image"]


def test_image_is_required_in_docker_mode() -> None:
    assert "required when serve_mode is docker" in problems()["docker_image"]


def test_image_id_needs_a_tarball_and_a_tarball_needs_an_image_id() -> None:
    assert "cannot be pulled" in problems(docker_image=IMAGE_ID)["docker_image"]
    reason = problems(docker_image=IMAGE, docker_image_tarball="/srv/x.tar")["docker_image"]
    assert "pin its image ID" in reason


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [("docker_user", "0:0", "must not be UID 0"), ("docker_user", "vllm", "UID:GID"),
     ("docker_memory", "64", "not a size"), ("docker_shm_size", "lots", "not a size"),
     ("docker_gpu_devices", ["/dev/nvidia0"], "GPU indices"),
     ("docker_cache_volume", "/var/cache", "volume name"),
     ("docker_pids_limit", 0, "greater than or equal"),
     ("docker_toolkit_version", "latest", "Debian version"),
     ("docker_repo_key_fingerprint", "0EBFCD88", "40-hex-digit"),
     ("docker_engine_source", "snap", "docker-repo")],
)  # fmt: skip
def test_bad_values_name_key_and_fix(key: str, value: object, text: str) -> None:
    found = problems(docker_image=IMAGE, **{key: value})
    assert text in found[key]


def test_swap_below_memory_is_refused() -> None:
    found = problems(docker_image=IMAGE, docker_memory="8g", docker_memory_swap="4g")
    assert "below docker_memory" in found["docker_memory_swap"]


def test_all_gpus_cannot_be_mixed_with_devices() -> None:
    found = problems(docker_image=IMAGE, docker_gpu_devices=["all", "1"])
    assert "'all' cannot be combined" in found["docker_gpu_devices"]


def test_secret_mount_needs_group_zero() -> None:
    assert problems(docker_image=IMAGE, docker_api_key_delivery="secret-mount") == {}
    found = problems(
        docker_image=IMAGE, docker_api_key_delivery="secret-mount", docker_user="2000:2000"
    )
    assert "GID 0" in found["docker_api_key_delivery"]
    assert "docker_api_key_delivery" in problems(docker_image=IMAGE, docker_api_key_delivery="x")


def test_derived_lock_must_exist_and_be_a_hash_lock(tmp_path: Path) -> None:
    assert problems(docker_image=IMAGE, docker_derived_lock="docker-vllm-0.12.0") == {}
    reason = problems(docker_image=IMAGE, docker_derived_lock="docker-nope")["docker_derived_lock"]
    assert "no lock" in reason and "docker-nope.txt" in reason
    assert "docker-vllm-0.12.0" in reason  # the locks there are
    (tmp_path / "plain.txt").write_text("six==1.17.0\n")
    (tmp_path / "good.txt").write_text("six==1.17.0 --hash=sha256:" + "0" * 64 + "\n")
    here = {"docker_image": IMAGE, "docker_locks_dir": str(tmp_path)}
    assert "not a hash lock" in problems(**here, docker_derived_lock="plain")["docker_derived_lock"]
    assert problems(**here, docker_derived_lock="good") == {}
    assert "no lock" in problems(**here, docker_derived_lock="../good")["docker_derived_lock"]


def test_the_shipped_docker_lock_keeps_the_venv_locks_versions() -> None:
    from autoglm_infra.stages.docker.image import load_derived_lock
    from autoglm_infra.stages.python_env.venv import load_lock

    derived = load_derived_lock("docker-vllm-0.12.0", None).lock.pins()
    venv = load_lock("vllm-cu128", DEFAULT_LOCKS_DIR, "vllm-cu128").pins()
    assert derived["transformers"] == venv["transformers"] == "5.0.0rc0"
    assert {name: venv.get(name) for name in derived} == derived
