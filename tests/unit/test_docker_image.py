"""Image IDs read from `docker save` tarballs, and the stand-in image builder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from autoglm_infra.stages.docker.image import (
    ImageError,
    check_tarball,
    pull_failure_hint,
    tarball_image_id,
)
from autoglm_testbed.standin_image import build_image


def test_standin_image_is_deterministic_and_its_id_is_read_back(tmp_path: Path) -> None:
    one = build_image(tmp_path / "a")
    two = build_image(tmp_path / "b")
    assert one.image_id == two.image_id
    assert one.tarball.read_bytes() == two.tarball.read_bytes()
    assert tarball_image_id(one.tarball) == one.image_id
    check_tarball(one.tarball, one.image_id)


def test_wrong_image_id_is_refused_before_upload(tmp_path: Path) -> None:
    image = build_image(tmp_path)
    with pytest.raises(ImageError, match="nothing was uploaded"):
        check_tarball(image.tarball, "sha256:" + "0" * 64)


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_config_that_does_not_match_its_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar"
    manifest = [{"Config": "blobs/sha256/" + "1" * 64, "Layers": []}]
    write_tar(path, {"manifest.json": json.dumps(manifest).encode(),
                     "blobs/sha256/" + "1" * 64: b"{}"})  # fmt: skip
    with pytest.raises(ImageError, match="hashes to"):
        tarball_image_id(path)


def test_not_a_docker_save_tarball_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"not a tar")
    with pytest.raises(ImageError, match="docker_image_tarball"):
        tarball_image_id(path)
    write_tar(path, {"other": b""})
    with pytest.raises(ImageError, match="docker_image_tarball"):
        tarball_image_id(path)


@pytest.mark.parametrize(
    ("ref", "via_mirrors"),
    [
        ("vllm/vllm-openai:v0.12.0@sha256:" + "a" * 64, True),
        ("docker.io/vllm/vllm-openai@sha256:" + "a" * 64, True),
        ("nvcr.io/nvidia/vllm@sha256:" + "a" * 64, False),
        ("localhost/x@sha256:" + "a" * 64, False),
        ("registry:5000/x@sha256:" + "a" * 64, False),
    ],
)
def test_pull_failure_hint_names_the_route_dockerd_took(ref: str, via_mirrors: bool) -> None:
    hint = pull_failure_hint(ref, ["http://mirror:5000"], "http://proxy:3128")
    assert hint.startswith(f"docker pull {ref} failed")
    assert ("docker_registry_mirrors http://mirror:5000" in hint) is via_mirrors
    assert "through proxy_url http://proxy:3128" in hint and "docker_image_tarball" in hint


def test_pull_failure_hint_without_mirrors_or_proxy() -> None:
    hint = pull_failure_hint("x/y@sha256:" + "b" * 64, [], None)
    assert "dockerd went" not in hint and "docker_image_tarball" in hint
