"""A Debian Python image with pip, as a `docker save` tarball made offline from the controller.

The derived-image test needs a base with python3 and pip, and no registry is reachable.
The controller is Debian 12 with python3-pip installed (a Makefile apt package), so the
image's one layer is the files dpkg lists for python3-pip and dash and their Depends
closure, taken from the controller's own disk (merged /usr, docs and locales left out,
byte-code caches kept so pip starts fast). The server inside is `python3 -m http.server`
answering /health and /v1/models, run as UID 2000 GID 0 like the vLLM image's user.

Owners are root (2000:0 for the cache directory) and mtimes are the installed files', so
the same installed packages give the same layer and image ID; the tarball is cached under
~/.cache/autoglm-infra/python-base-image/ by the packages' names and versions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from autoglm_testbed.standin_image import (
    MODELS_JSON,
    add_user_and_health_files,
    write_save_tarball,
)
from autoglm_testbed.standin_image import image_config as standin_image_config

ROOTS = ("python3-pip", "dash")
# merged /usr: these are symlinks into /usr on Debian 12
USR_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
SKIPPED = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/locale/", "/usr/share/info/")
PORT = 8000
MTIME = 1_700_000_000
DEFAULT_CACHE = Path.home() / ".cache" / "autoglm-infra" / "python-base-image"
_NAME = re.compile(r"^([A-Za-z0-9.+-]+)")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    depends: str  # Pre-Depends and Depends, comma-joined, as dpkg-query prints them
    provides: tuple[str, ...]


@dataclass(frozen=True)
class PythonBaseImage:
    tarball: Path
    image_id: str  # sha256:<hex>

    @property
    def command(self) -> list[str]:
        """docker_command: serve /www; PID 1 is a shell that exits on TERM (fast stop)."""
        serve = f"python3 -m http.server {PORT} --bind 0.0.0.0 --directory /www"
        return ["/bin/sh", "-c", f"trap 'exit 0' TERM; {serve} & wait"]


def installed_packages() -> dict[str, Package]:
    fmt = "${Package}\t${Version}\t${Pre-Depends}, ${Depends}\t${Provides}\t${db:Status-Abbrev}\n"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True
    ).stdout
    packages = {}
    for line in out.splitlines():
        name, version, depends, provides, status = line.split("\t")
        if status.startswith("ii"):
            names = tuple(_first_name(p) for p in provides.split(",") if p.strip())
            packages[name] = Package(name, version, depends, names)
    return packages


def _first_name(relation: str) -> str:
    match = _NAME.match(relation.strip())
    return match.group(1) if match else ""


def closure(roots: Iterable[str], packages: Mapping[str, Package]) -> list[str]:
    """Installed packages `roots` need through Pre-Depends/Depends (first installed
    alternative; virtual names through an installed provider), sorted."""
    providers: dict[str, str] = {}
    for pkg in packages.values():
        for virtual in pkg.provides:
            providers.setdefault(virtual, pkg.name)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in packages:
            raise RuntimeError(f"{name} is not installed on the controller: apt-get install {name}")
        seen.add(name)
        for group in packages[name].depends.split(","):
            choices = [_first_name(c).removesuffix(":any") for c in group.split("|")]
            for choice in choices:
                found = choice if choice in packages else providers.get(choice)
                if found:
                    todo.append(found)
                    break
    return sorted(seen)


def _in_image(path: str) -> str:
    """Path inside the image of a dpkg-listed path (no leading slash, /usr-merged)."""
    rel = path.lstrip("/")
    top, _, rest = rel.partition("/")
    if top in USR_LINKS and rest:
        return f"{USR_LINKS[top]}/{rest}"
    return rel


def listed_paths(names: Iterable[str]) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-L", *names], capture_output=True, text=True, check=True
    ).stdout
    paths = {_in_image(p) for p in out.splitlines() if p.startswith("/")}
    paths.discard("")
    pycache = set()
    for path in paths:
        cache = Path("/", path, "__pycache__")
        if path.startswith("usr/lib/python3") and cache.is_dir():
            pycache.add(str(cache.relative_to("/")))
            pycache.update(str(p.relative_to("/")) for p in cache.glob("*.pyc"))
    return sorted(p for p in paths | pycache if not f"/{p}".startswith(SKIPPED))


def _add_path(tar: tarfile.TarFile, rel: str, added: set[str]) -> None:
    if rel in added or rel in USR_LINKS:
        return
    parent = os.path.dirname(rel)
    if parent:
        _add_path(tar, parent, added)
    source = Path("/", rel)
    if parent and Path("/", parent).is_symlink():
        return  # inside a linked directory: the link's target is listed on its own
    try:
        st = source.lstat()
    except FileNotFoundError:
        return  # listed but absent (path-exclude in dpkg.cfg.d, removed conffile)
    info = tarfile.TarInfo(rel)
    info.mode, info.mtime, info.uid, info.gid = st.st_mode & 0o7777, int(st.st_mtime), 0, 0
    added.add(rel)
    if source.is_symlink():
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(source)
        tar.addfile(info)
    elif source.is_dir():
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif source.is_file():
        info.size = st.st_size
        with source.open("rb") as fh:
            tar.addfile(info, fh)


def _add_data(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int,
              owner: tuple[int, int] = (0, 0)) -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, (info.uid, info.gid) = mode, MTIME, owner
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def layer_tar(paths: Iterable[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for link, target in USR_LINKS.items():
            info = tarfile.TarInfo(link)
            info.type, info.linkname, info.mtime, info.mode = tarfile.SYMTYPE, target, MTIME, 0o777
            tar.addfile(info)
        added: set[str] = set()
        for rel in paths:
            _add_path(tar, rel, added)
        for d in ("etc", "home", "home/vllm", "www", "www/v1", "root"):
            if d not in added:
                _add_data(tar, d, None, 0o755)
        _add_data(tar, "tmp", None, 0o1777)
        # where the cache volume is mounted: a fresh volume copies this owner and mode
        _add_data(tar, "home/vllm/.cache", None, 0o775, (2000, 0))
        add_user_and_health_files(tar)
    return out.getvalue()


def image_config(diff_id: str) -> bytes:
    return standin_image_config(
        diff_id,
        path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        cmd=("python3", "-m", "http.server", str(PORT), "--directory", "/www"),
        created_by="autoglm_testbed.python_base_image",
    )


def build_python_image(
    cache_dir: Path = DEFAULT_CACHE, tag: str = "autoglm/python-base:1"
) -> PythonBaseImage:
    """The image's tarball (built once per set of installed package versions)."""
    packages = installed_packages()
    names = closure(ROOTS, packages)
    key_doc = json.dumps([(n, packages[n].version) for n in names] + [MODELS_JSON, 1])
    key = hashlib.sha256(key_doc.encode()).hexdigest()[:16]
    tarball = Path(cache_dir) / f"python-base-{key}.tar"
    id_file = tarball.with_suffix(".id")
    if tarball.exists() and id_file.exists():
        return PythonBaseImage(tarball, id_file.read_text().strip())
    layer = layer_tar(listed_paths(names))
    config = image_config(f"sha256:{hashlib.sha256(layer).hexdigest()}")
    image_id = write_save_tarball(tarball, tag, layer, config)
    id_file.write_text(f"{image_id}\n")
    return PythonBaseImage(tarball, image_id)
