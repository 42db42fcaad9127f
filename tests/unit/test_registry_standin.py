"""The registry stand-in: manifests and blobs by tag and digest, headers, 404s, the image ID."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm_testbed.registry_standin import (
    CONFIG_V1,
    LAYER_GZIP,
    MANIFEST_V2,
    RegistryHandler,
    RegistryImage,
    registry_image,
    standin_registry_image,
    variant_layer,
    write_layout,
)
from autoglm_testbed.standin_image import build_image
from autoglm_testbed.static_http import make_server, read_access_log, serve_in_thread

Response = tuple[int, http.client.HTTPMessage, bytes]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tiny_image(tag: str = "1") -> RegistryImage:
    layer = variant_layer(f"layer-{tag}")
    rootfs = {"type": "layers", "diff_ids": [sha(layer)]}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
    return registry_image("autoglm/tiny", tag, [layer], config)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, RegistryImage, Path]]:
    image = tiny_image()
    write_layout(tmp_path / "v2", [image])
    log = tmp_path / "access.log"
    server = make_server(tmp_path / "v2", access_log=log, handler_class=RegistryHandler)
    with serve_in_thread(server):
        yield server.port, image, log


def fetch(port: int, path: str, method: str = "GET") -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_image_manifest_names_config_and_gzip_layers_by_digest() -> None:
    image = tiny_image()
    doc = json.loads(image.manifest)
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == MANIFEST_V2
    assert doc["config"]["mediaType"] == CONFIG_V1
    assert [layer["mediaType"] for layer in doc["layers"]] == [LAYER_GZIP]
    for digest in image.blob_digests:
        assert sha(image.blobs[digest]) == digest
    layer = gzip.decompress(image.blobs[doc["layers"][0]["digest"]])
    config = json.loads(image.blobs[image.image_id])
    assert config["rootfs"]["diff_ids"] == [sha(layer)]
    assert tiny_image().digest == image.digest  # deterministic, gzip mtime included
    assert image.reference().startswith("docker.io/autoglm/tiny@sha256:")


def test_layers_that_do_not_match_the_config_are_refused() -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(b"other")]}}).encode()
    with pytest.raises(ValueError, match="diff_ids"):
        registry_image("autoglm/tiny", "1", [variant_layer("x")], config)


def test_standin_image_pulls_with_the_same_image_id_as_its_tarball(tmp_path: Path) -> None:
    base = standin_registry_image("1")
    assert base.image_id == build_image(tmp_path).image_id
    variant = standin_registry_image("2", variant="2")
    assert variant.digest != base.digest and len(json.loads(variant.manifest)["layers"]) == 2
    extra = gzip.decompress(variant.blobs[variant.blob_digests[2]])
    with tarfile.open(fileobj=io.BytesIO(extra)) as tar:
        assert tar.getnames() == ["www/variant"]


def test_ping_answers_with_the_api_version(served: tuple[int, RegistryImage, Path]) -> None:
    port, _image, _log = served
    status, headers, body = fetch(port, "/v2/")
    assert status == 200 and json.loads(body) == {}
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("ref", ["tag", "digest"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_manifest_by_tag_and_by_digest(
    served: tuple[int, RegistryImage, Path], ref: str, method: str
) -> None:
    port, image, _log = served
    name = image.tag if ref == "tag" else image.digest
    status, headers, body = fetch(port, f"/v2/autoglm/tiny/manifests/{name}", method)
    assert status == 200
    assert headers["Content-Type"] == MANIFEST_V2
    assert headers["Docker-Content-Digest"] == image.digest
    assert int(headers["Content-Length"]) == len(image.manifest)
    assert body == (image.manifest if method == "GET" else b"")


def test_blobs_by_digest_with_their_digest_header(served: tuple[int, RegistryImage, Path]) -> None:
    port, image, log = served
    for digest in image.blob_digests:
        status, headers, body = fetch(port, f"/v2/autoglm/tiny/blobs/{digest}")
        assert status == 200 and body == image.blobs[digest]
        assert headers["Docker-Content-Digest"] == digest
        assert headers["Content-Type"] == "application/octet-stream"
    paths = [(e.method, e.path, e.status) for e in read_access_log(log)]
    assert ("GET", f"/v2/autoglm/tiny/blobs/{image.image_id}", 200) in paths


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/autoglm/tiny/manifests/2", "MANIFEST_UNKNOWN"),
        ("/v2/autoglm/tiny/manifests/sha256:" + "0" * 64, "MANIFEST_UNKNOWN"),
        ("/v2/autoglm/tiny/blobs/sha256:" + "0" * 64, "BLOB_UNKNOWN"),
        ("/v2/autoglm/other/manifests/1", "MANIFEST_UNKNOWN"),
        ("/v2/autoglm/tiny/tags/list", "NAME_UNKNOWN"),
        ("/v2/../v2/autoglm/tiny/manifests/1", "NAME_UNKNOWN"),
        ("/etc/passwd", "NAME_UNKNOWN"),
    ],
)
def test_everything_else_is_a_registry_404(
    served: tuple[int, RegistryImage, Path], path: str, code: str
) -> None:
    port, _image, _log = served
    status, _headers, body = fetch(port, path)
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == code
