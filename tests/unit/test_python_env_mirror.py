"""Wheel cache and PyPI-style mirror on loopback (pypiserver), with a tiny built wheel."""

from __future__ import annotations

import hashlib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from autoglm_infra.common.hash_lock import parse_lock
from autoglm_testbed.pypi_mirror import PypiMirror, WheelCache, WheelCacheError

NAME = "demo_pkg-1.0-py3-none-any.whl"


def tiny_wheel(folder: Path) -> Path:
    path = folder / NAME
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo_pkg/__init__.py", "VALUE = 1\n")
        meta = "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n"
        zf.writestr("demo_pkg-1.0.dist-info/METADATA", meta)
        tags = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        zf.writestr("demo_pkg-1.0.dist-info/WHEEL", tags)
        zf.writestr("demo_pkg-1.0.dist-info/RECORD", "")
    return path


def sha(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return hashlib.sha256(data).hexdigest()


def fetch(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def test_cache_is_content_keyed_and_warm_cache_needs_no_pip(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path)
    cache = WheelCache(tmp_path / "cache")
    stored = cache.add(wheel, [sha(wheel)])
    assert stored == tmp_path / "cache" / "sha256" / sha(wheel) / NAME
    lock = parse_lock(f"demo-pkg==1.0 --hash=sha256:{sha(wheel)}\n", "demo")
    # warm: found by hash, no download (pip would fail: demo-pkg exists nowhere)
    assert cache.ensure(lock, torch_index_base=None) == [stored]


def test_cache_refuses_a_file_not_in_the_lock(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path)
    with pytest.raises(WheelCacheError, match="not in the lock"):
        WheelCache(tmp_path / "cache").add(wheel, ["0" * 64])


def test_mirror_serves_cached_wheels_and_tamper_changes_only_the_served_copy(
    tmp_path: Path,
) -> None:
    wheel = WheelCache(tmp_path / "cache").add(tiny_wheel(tmp_path), [sha(tiny_wheel(tmp_path))])
    with PypiMirror(tmp_path / "mirror", "127.0.0.1", [wheel]) as mirror:
        assert mirror.index_url.startswith("http://127.0.0.1:")
        page = fetch(mirror.index_url + "demo-pkg/").decode()
        assert NAME in page
        file_url = mirror.index_url.replace("/simple/", "/packages/") + NAME
        assert sha(fetch(file_url)) == sha(wheel)
        assert b"404" in fetch_status(mirror.index_url + "six/")
        mirror.tamper(NAME)
        assert sha(fetch(file_url)) != sha(wheel)
    assert sha(wheel) == wheel.parent.name  # the cache kept the good bytes


def fetch_status(url: str) -> bytes:
    try:
        fetch(url)
    except urllib.error.HTTPError as err:
        return str(err.code).encode()
    return b"200"


def test_detached_mirror_is_stopped_later_through_its_pidfile(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path)
    first = PypiMirror(tmp_path / "mirror", "127.0.0.1", [wheel]).start(detached=True)
    try:
        assert NAME in fetch(first.index_url + "demo-pkg/").decode()
        PypiMirror(tmp_path / "mirror", "127.0.0.1", [wheel]).stop()  # e.g. `make sandbox-down`
        assert not first.pidfile.exists()
        with pytest.raises(OSError):
            fetch(first.index_url)
    finally:
        first.stop()
