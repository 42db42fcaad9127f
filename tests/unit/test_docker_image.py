"""Image IDs read from `docker save` tarballs, and the stand-in image builder."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from autoglm_infra.stages.docker.image import (
    ImageError,
    check_tarball,
    pull_failure_hint,
    tarball_image_id,
)
from autoglm_testbed.standin_image import GATE, MODELS_JSON, build_image, ensure_busybox, layer_tar


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


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in's layer unpacked: its own busybox, gate script and /www."""
    root = tmp_path_factory.mktemp("standin-root")
    layer = layer_tar(ensure_busybox().read_bytes())
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        tar.extractall(root, filter="tar")
    return root


def gate(root: Path, request: bytes, key: str | None) -> tuple[int, bytes]:
    """(status, body) of one connection handled by the image's gate, as `nc -e` runs it."""
    env = {"PATH": str(root / "bin")} | ({"VLLM_API_KEY": key} if key is not None else {})
    argv = [str(root / "bin" / "sh"), str(root / GATE)]
    out = subprocess.run(argv, input=request, env=env, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def get(path: str, *headers: str) -> bytes:
    return "".join(f"{line}\r\n" for line in (f"GET {path} HTTP/1.1", *headers, "")).encode()


KEY = "sk-gate-" + "5" * 32


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/v1/models"),
        get("/v1/models", "Authorization: Bearer wrong-key"),
        get("/v1/models", f"Authorization: Basic {KEY}"),
        get("/v1/models", f"Authorization: Bearer {KEY}x"),
        get("/v1/chat/completions", f"X-Api-Key: {KEY}"),
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["none", "wrong", "basic", "longer", "other-header", "post"],
)
def test_gate_refuses_v1_without_the_key_like_vllm(image_root: Path, request_bytes: bytes) -> None:
    status, body = gate(image_root, request_bytes, KEY)
    assert status == 401 and json.loads(body) == {"error": "Unauthorized"}


def test_gate_serves_the_right_key_and_health_without_one(image_root: Path) -> None:
    status, body = gate(image_root, get("/v1/models", f"Authorization: Bearer {KEY}"), KEY)
    assert status == 200 and json.loads(body) == MODELS_JSON
    # header names are case-insensitive and surrounding blanks are not part of the value
    spaced = get("/v1/models", "User-Agent: t", f"authorization: \t Bearer {KEY}  ")
    assert gate(image_root, spaced, KEY)[0] == 200
    assert gate(image_root, get("/health"), KEY) == (200, b"ok\n")
    assert gate(image_root, get("/nothing-here"), KEY)[0] == 404


@pytest.mark.parametrize("key", [None, ""])
def test_gate_checks_nothing_without_a_key(image_root: Path, key: str | None) -> None:
    status, body = gate(image_root, get("/v1/models"), key)
    assert status == 200 and json.loads(body) == MODELS_JSON
