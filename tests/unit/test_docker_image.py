"""Image IDs read from `docker save` tarballs, and the stand-in image builder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from autoglm_infra.docker_image import ImageError, check_tarball, tarball_image_id
from autoglm_infra.testbed.standin_image import build_image


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
