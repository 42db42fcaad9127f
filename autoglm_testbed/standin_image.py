"""A tiny engine-image stand-in, written as a `docker save` tarball without Docker.

No registry is reachable from the sandbox, so the Docker stage's air-gapped path (upload
a tarball, `docker load`, run by image ID) is what the tests exercise. The image is
Debian's static busybox: `httpd` serves /health and /v1/models as static files (a
minimal health server: the CPU engine and its Python stack cannot be put in an image
offline without a registry base image), as UID 2000 GID 0 like the vLLM image's user.

It checks the API key the way vLLM does (modelled on vLLM's AuthenticationMiddleware in
`vllm/entrypoints/openai/api_server.py` and its security docs, which say the key guards
/v1, /v2, /inference and /cohere only): with VLLM_API_KEY set in the container's
environment, a request whose path starts with /v1 and whose Authorization header is not
exactly `Bearer <key>` gets 401 and `{"error":"Unauthorized"}` (Starlette's compact
JSONResponse); /health stays open; unset or empty, nothing is checked. busybox httpd
runs CGI only under /cgi-bin/ or by file suffix and this busybox has no reverse proxy,
so /v1/models cannot reach a script through httpd alone: `nc -ll` hands each connection
to the GATE shell script, which reads the request head, answers 401 itself or replays
the head to `httpd -i`. The key is only ever in the environment, never in argv.

The layer is a deterministic tar (fixed mtimes and owners), so the image ID is the same
on every build of the same busybox; the tarball is cached by that ID.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "httpd", "nc", "wget", "id", "cat", "ls", "sleep", "touch", "ps")
MTIME = 1_700_000_000
PORT = 8000
USER = "2000:0"
MODELS_JSON = {"object": "list", "data": [{"id": "autoglm-phone-9b", "object": "model"}]}
GATE = "bin/key-gate"
# One connection on stdin/stdout (from `nc -ll -e`). Only shell builtins touch the key, so it
# never reaches an argv. The tree served is the one the script sits in (/www in the image).
GATE_SCRIPT = r"""#!/bin/sh
www=${0%/bin/*}/www
cr=$(printf '\r')
IFS= read -t 60 -r line || exit 0
head="$line
"
auth=
while IFS= read -t 60 -r h; do
    head="$head$h
"
    h=${h%"$cr"}
    [ -n "$h" ] || break
    case $h in
    [Aa][Uu][Tt][Hh][Oo][Rr][Ii][Zz][Aa][Tt][Ii][Oo][Nn]:*)
        auth=${h#*:}
        auth=${auth#"${auth%%[! 	]*}"}
        auth=${auth%"${auth##*[! 	]}"}
        ;;
    esac
done
set -f
set -- $line
case ${2-} in
/v1*)
    if [ -n "${VLLM_API_KEY-}" ] && [ "$auth" != "Bearer $VLLM_API_KEY" ]; then
        body='{"error":"Unauthorized"}'
        printf 'HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n'
        printf 'Content-Length: %s\r\nConnection: close\r\n\r\n%s' "${#body}" "$body"
        exit 0
    fi
    ;;
esac
printf '%s' "$head" | httpd -i -h "$www"
"""
# httpd as PID 1 ignores SIGTERM, so `docker stop` would wait its whole timeout (30 s in the
# unit) before SIGKILL; a shell that exits on TERM stops at once, as vLLM does.
SERVE = ("/bin/sh", "-c", f"trap 'exit 0' TERM; /bin/nc -ll -p {PORT} -e /{GATE} & wait")


@dataclass(frozen=True)
class StandinImage:
    tarball: Path
    image_id: str  # sha256:<hex>

    @property
    def command(self) -> list[str]:
        """docker_command for the sandbox: serve /www on PORT behind the key gate."""
        return list(SERVE)

    @property
    def health_cmd(self) -> str:
        return f"wget -q -O /dev/null http://127.0.0.1:{PORT}/health"


def ensure_busybox() -> Path:
    if not BUSYBOX.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "busybox-static"]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, capture_output=True)
    if not BUSYBOX.exists():
        raise RuntimeError("needs Debian's busybox-static: apt-get install -y busybox-static")
    return BUSYBOX


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    data: bytes | None = None,
    mode: int = 0o644,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    owner: tuple[int, int] = (0, 0),
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid, info.gid = owner
    info.linkname = link
    info.size = len(data) if data is not None else 0
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def layer_tar(busybox: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "www", "www/v1", "home", "home/vllm"):
            _add(tar, d, kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        # where the cache volume is mounted: a fresh volume copies this owner and mode
        _add(tar, "home/vllm/.cache", kind=tarfile.DIRTYPE, mode=0o775, owner=(2000, 0))
        _add(tar, "bin/busybox", data=busybox, mode=0o755)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(tar, GATE, data=GATE_SCRIPT.encode(), mode=0o755)
        add_user_and_health_files(tar)
    return out.getvalue()


def add_user_and_health_files(tar: tarfile.TarFile) -> None:
    """The vLLM image's user (2000:0) and the static /health and /v1/models answers."""
    _add(
        tar,
        "etc/passwd",
        data=b"root:x:0:0::/root:/bin/sh\nvllm:x:2000:0::/home/vllm:/bin/sh\n",
    )
    _add(tar, "etc/group", data=b"root:x:0:\n")
    _add(tar, "www/health", data=b"ok\n")
    _add(tar, "www/v1/models", data=json.dumps(MODELS_JSON).encode())


def image_config(
    diff_id: str,
    *,
    path: str = "/bin",
    cmd: tuple[str, ...] = SERVE,
    created_by: str = "autoglm_testbed.standin_image",
) -> bytes:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": USER, "Env": [f"PATH={path}"], "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": created_by}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def write_save_tarball(tarball: Path, tag: str, layer: bytes, config: bytes) -> str:
    """A one-layer `docker save` file at `tarball` (written aside, then renamed); its image ID."""
    layer_hex = hashlib.sha256(layer).hexdigest()
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = [
        {"Config": f"{config_hex}.json", "RepoTags": [tag], "Layers": [f"{layer_hex}/layer.tar"]}
    ]
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(tarball.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{layer_hex}", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, f"{layer_hex}/layer.tar", data=layer)
        _add(tar, f"{config_hex}.json", data=config)
        _add(tar, "manifest.json", data=json.dumps(manifest).encode())
    tmp.replace(tarball)
    return f"sha256:{config_hex}"


def build_image(cache_dir: Path, tag: str = "autoglm/standin-engine:1") -> StandinImage:
    """The stand-in's `docker save` tarball under cache_dir (reused when already built)."""
    layer = layer_tar(ensure_busybox().read_bytes())
    config = image_config(f"sha256:{hashlib.sha256(layer).hexdigest()}")
    config_hex = hashlib.sha256(config).hexdigest()
    tarball = Path(cache_dir) / f"standin-engine-{config_hex[:16]}.tar"
    if not tarball.exists():
        write_save_tarball(tarball, tag, layer, config)
    return StandinImage(tarball, f"sha256:{config_hex}")
