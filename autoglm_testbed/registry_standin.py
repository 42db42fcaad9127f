"""A read-only Docker Registry HTTP API v2 stand-in serving the stand-in image as a real pull.

`docker pull` (through `registry-mirrors`, with or without the daemon's proxy) talks to it
exactly as to a Docker Hub mirror: ``GET /v2/``, ``HEAD``/``GET`` of a manifest by tag or
by digest (schema 2 media type, ``Docker-Content-Digest``), then the config and gzip layer
blobs by digest, each verified by the daemon against its digest. Anything else is a 404
with the registry's JSON error body. The JSON-lines access log (client address, method,
path, status) proves which requests happened and from where: a pull through the proxy
comes from the controller's address, a direct one from the host's.

Why not a library: PyPI's ``docker-registry`` is the 2015 v1 registry (Python 2); Debian's
``docker-registry`` (distribution 2.8) is the real server but needs a push client to
fill; a fixed read-only image set needs only these three endpoints on top of the Range /
ETag file server in :mod:`static_http`.

The image is the busybox health server of :mod:`standin_image`: its config is byte for
byte that image's, so a pulled image has the same image ID as the `docker save` tarball.
A ``variant`` adds a label and one small extra layer (a second pinned digest to move to).

    images = [standin_registry_image("1"), standin_registry_image("2", variant="2")]
    with RegistryStandin(state_dir, "10.231.22.1", images) as registry:
        registry.url                     # http://10.231.22.1:PORT (a registry-mirrors entry)
        images[0].reference()            # docker.io/autoglm/standin@sha256:...
        registry.requests()              # access log entries
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Self

from autoglm_testbed.servers import HttpReady, LoopbackServer, StandinLifecycle, free_port
from autoglm_testbed.standin_image import MTIME, ensure_busybox, image_config, layer_tar
from autoglm_testbed.static_http import (
    AccessLogEntry,
    StaticFileHandler,
    StaticHTTPServer,
    read_access_log,
    serve_until_signalled,
)

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
REPOSITORY = "autoglm/standin"
VARIANT_LABEL = "org.autoglm.standin.variant"
_ROUTE = re.compile(
    r"^/v2/(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"/(?P<kind>manifests|blobs)/(?P<ref>sha256:[0-9a-f]{64}|[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$"
)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class RegistryImage:
    """One pullable image: its schema 2 manifest and every blob it names."""

    repository: str
    tag: str
    manifest: bytes
    blobs: Mapping[str, bytes]  # digest -> bytes (config and gzip layers)

    @property
    def digest(self) -> str:
        """What `name@sha256:...` pins: the sha256 of the manifest bytes."""
        return sha256_digest(self.manifest)

    @property
    def image_id(self) -> str:
        """The image ID Docker reports after the pull: the config's digest."""
        return str(json.loads(self.manifest)["config"]["digest"])

    @property
    def blob_digests(self) -> list[str]:
        doc = json.loads(self.manifest)
        return [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]

    def reference(self, registry: str = "docker.io") -> str:
        return f"{registry}/{self.repository}@{self.digest}"


def gzip_layer(tar_bytes: bytes) -> bytes:
    """Deterministic gzip (no name, mtime 0): the same layer always has the same digest."""
    return gzip.compress(tar_bytes, compresslevel=6, mtime=0)


def registry_image(
    repository: str, tag: str, layers: Sequence[bytes], config: bytes
) -> RegistryImage:
    """Image from uncompressed layer tars and a config whose diff_ids match them."""
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    if diff_ids != [sha256_digest(layer) for layer in layers]:
        raise ValueError("config rootfs.diff_ids do not match the layers")
    gzipped = [gzip_layer(layer) for layer in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": sha256_digest(config)},
        "layers": [
            {"mediaType": LAYER_GZIP, "size": len(blob), "digest": sha256_digest(blob)}
            for blob in gzipped
        ],
    }
    blobs = {sha256_digest(b): b for b in [config, *gzipped]}
    return RegistryImage(repository, tag, json.dumps(manifest, indent=3).encode(), blobs)


def variant_layer(variant: str) -> bytes:
    """A one-file layer (/www/variant) so a variant needs a blob the base image lacks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = f"{variant}\n".encode()
        info = tarfile.TarInfo("www/variant")
        info.mtime, info.mode, info.size = MTIME, 0o644, len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def standin_registry_image(
    tag: str = "1", variant: str = "", repository: str = REPOSITORY
) -> RegistryImage:
    """The stand-in image (busybox health server); a variant adds a label and a layer."""
    layers = [layer_tar(ensure_busybox().read_bytes())]
    config = image_config(sha256_digest(layers[0]))
    if variant:
        layers.append(variant_layer(variant))
        doc = json.loads(config)
        doc["config"]["Labels"] = {VARIANT_LABEL: variant}
        doc["rootfs"]["diff_ids"] = [sha256_digest(layer) for layer in layers]
        config = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return registry_image(repository, tag, layers, config)


def write_layout(root: Path, images: Sequence[RegistryImage]) -> None:
    """<root>/<repository>/manifests/<tag and digest> and <root>/<repository>/blobs/<digest>."""
    for image in images:
        repo = root / image.repository
        (repo / "manifests").mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for ref in (image.tag, image.digest):
            _write(repo / "manifests" / ref, image.manifest)
        for digest, data in image.blobs.items():
            _write(repo / "blobs" / digest, data)


def _write(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return  # keep mtimes (ETags) stable across restarts
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# ----------------------------------------------------------------------------- the server


class RegistryHandler(StaticFileHandler):
    """Registry v2 read API over files laid out by :func:`write_layout`."""

    server_version = "autoglm-registry-standin/1"

    def _error(self, status: int, code: str, message: str) -> None:
        self.send_json(status, {"errors": [{"code": code, "message": message}]}, API_VERSION)

    def before_file(self) -> bool:
        path = self.url_path()
        if path in ("/v2", "/v2/"):
            self.send_json(HTTPStatus.OK, {}, API_VERSION)
            return True
        match = _ROUTE.match(path)
        if match is None:
            self._error(HTTPStatus.NOT_FOUND, "NAME_UNKNOWN", "no such endpoint or repository")
            return True
        if self.resolve_file(path) is None:
            kind = match["kind"]
            code = "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN"
            self._error(HTTPStatus.NOT_FOUND, code, f"{kind[:-1]} unknown: {match['ref']}")
            return True
        return False  # the base class serves the file (with Range and ETag)

    def resolve_file(self, url_path: str) -> Path | None:
        match = _ROUTE.match(url_path)
        if match is None:
            return None
        return super().resolve_file(f"/{match['name']}/{match['kind']}/{match['ref']}")

    def guess_type(self, file: Path) -> str:
        return MANIFEST_V2 if file.parent.name == "manifests" else "application/octet-stream"

    def extra_headers(self, file: Path, st: os.stat_result) -> Mapping[str, str]:
        digest = file.name if file.parent.name == "blobs" else sha256_digest(file.read_bytes())
        return {**API_VERSION, "Docker-Content-Digest": digest}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, required=True, help="layout from write_layout")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--access-log", type=Path)
    args = parser.parse_args(argv)
    server = StaticHTTPServer(args.root, (args.bind, args.port), RegistryHandler, args.access_log)
    serve_until_signalled(server, f"registry stand-in on http://{args.bind}:{server.port}/v2/")
    return 0


class RegistryStandin(StandinLifecycle):
    """The registry as its own process on `bind` (the sandbox bridge address)."""

    def __init__(
        self, state_dir: Path, bind: str, images: Sequence[RegistryImage], port: int | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        self.bind = bind
        self.images = list(images)
        self.port = port or free_port(bind)
        self.access_log = self.state_dir / "access.log"
        self._server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}"

    def start(self) -> Self:
        root = self.state_dir / "v2"
        write_layout(root, self.images)
        self.access_log.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "autoglm_testbed.registry_standin",
                "--root", str(root), "--bind", self.bind, "--port", str(self.port),
                "--access-log", str(self.access_log)]  # fmt: skip
        self._server = LoopbackServer(
            argv,
            log_path=self.state_dir / "registry.log",
            ready=HttpReady(f"{self.url}/v2/"),
            name="registry-standin",
        )
        self._server.start()
        return self

    def requests(self) -> list[AccessLogEntry]:
        """Every request served so far (the readiness probe's GET /v2/ included)."""
        return read_access_log(self.access_log)


if __name__ == "__main__":
    sys.exit(main())
