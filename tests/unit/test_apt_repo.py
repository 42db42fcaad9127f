"""A real signed apt repository of stand-ins, resolved and downloaded by real apt.

Needs dpkg-dev, gnupg and apt (installed by ensure_tools when missing and root); it fails
rather than skips when they cannot be had. apt runs inside IsolatedApt: the system's
/etc/apt, /var/lib/apt and /var/cache/apt are checked to be untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm_testbed.apt_repo import (
    AptRepo,
    AptRepoError,
    FileEntry,
    IsolatedApt,
    PackageSpec,
    SigningKey,
    build_deb,
    build_repo,
    ensure_tools,
)
from autoglm_testbed.servers import LoopbackServer, TcpReady, free_port
from autoglm_testbed.static_http import wait_for_access_log

DRIVER_NEW = "570.172.08-1"
DRIVER_OLD = "570.133.20-1"

SPECS = [
    PackageSpec(
        "nvidia-driver-570-open",
        DRIVER_NEW,
        provides="nvidia-driver-570",
        conflicts="nvidia-driver-570",
        description="NVIDIA driver metapackage (open kernel modules)",
    ),
    PackageSpec("nvidia-driver-570-open", DRIVER_OLD),
    PackageSpec(
        "cuda-drivers-570",
        DRIVER_NEW,
        depends=f"nvidia-driver-570-open (= {DRIVER_NEW})",
        files={"/usr/bin/standin-cuda-drivers": FileEntry("#!/bin/sh\necho standin\n", 0o755)},
        maintainer_scripts={"postinst": 'echo "configured $1"'},
    ),
    PackageSpec(
        "cuda-keyring",
        "1.1-1",
        "all",
        files={"/etc/apt/sources.list.d/cuda.sources": "Types: deb\n"},
        conffiles=["/etc/apt/sources.list.d/cuda.sources"],
    ),
]


@pytest.fixture(scope="session", autouse=True)
def apt_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("test_apt_repo needs root (it may apt-get install dpkg-dev/gnupg)")
    ensure_tools()  # raises with the apt-get command to run when it cannot install
    for tool in ("apt-get", "apt-cache", "gpgv"):
        assert shutil.which(tool), f"{tool} missing: apt-get install -y apt gpgv"


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(tmp_path_factory.mktemp("key"))


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(tmp_path_factory.mktemp("other-key"))


@pytest.fixture(scope="session")
def flat_repo(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> AptRepo:
    return build_repo(tmp_path_factory.mktemp("www") / "cuda", SPECS, key)


@pytest.fixture(scope="session")
def web(flat_repo: AptRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """static_http serving the parent of the repo, on 127.0.0.1: (base URL, access log)."""
    logs = tmp_path_factory.mktemp("web-logs")
    port = free_port()
    argv = [sys.executable, "-m", "autoglm_testbed.static_http"]
    argv += ["--root", str(flat_repo.root.parent), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--access-log", str(logs / "access.log")]
    srv = LoopbackServer(argv, log_path=logs / "server.log", ready=TcpReady("127.0.0.1", port))
    with srv:
        yield f"http://127.0.0.1:{port}", logs / "access.log"


def system_apt_state() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of everything apt could write on this machine."""
    state = {}
    for top in ("/etc/apt", "/var/lib/apt", "/var/cache/apt", "/var/lib/dpkg/status"):
        paths = [Path(top)] if Path(top).is_file() else [Path(top), *Path(top).rglob("*")]
        for path in paths:
            if path.exists():
                st = path.stat()
                state[str(path)] = (st.st_mtime_ns, st.st_size)
    return state


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], check=True, capture_output=True, text=True
    ).stdout.strip()


# --- key ---------------------------------------------------------------------------------


def gpg_agents_for(home: Path) -> list[str]:
    """gpg-agents (not yet exited) started for home."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if "gpg-agent" not in cmdline or "--homedir" not in cmdline:
                continue
            homedir = cmdline.split("--homedir ", 1)[1].split(" ", 1)[0]
            # Long homedirs are reached through a short /tmp/gh-*/h symlink.
            if homedir == str(home) or Path(homedir).resolve() == home.resolve():
                found.append(cmdline)
    return found


def test_signing_key_exports_armored_and_dearmored_and_is_cached(
    key: SigningKey, tmp_path: Path
) -> None:
    assert re.fullmatch(r"[0-9A-F]{40}", key.fingerprint)
    assert key.short_id == key.fingerprint[-8:].lower()
    assert key.armored_path.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert not key.dearmored_path.read_bytes().startswith(b"-----")
    for path in (key.armored_path, key.dearmored_path):
        shown = subprocess.run(
            ["gpg", "--homedir", str(tmp_path), "--with-colons", "--show-keys", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert f"fpr:::::::::{key.fingerprint}:" in shown
        assert path.stat().st_mode & 0o777 == 0o644  # apt reads signed-by keyrings as _apt
    assert key.gnupghome.stat().st_mode & 0o777 == 0o700
    assert SigningKey.load_or_create(key.directory) == key  # cached, not regenerated
    assert gpg_agents_for(key.gnupghome) == []


def test_signing_key_works_with_a_long_homedir_path(tmp_path: Path) -> None:
    # gpg-agent's socket path would exceed the 107-byte unix socket limit.
    deep = tmp_path / ("k" * 60) / ("e" * 60)
    key = SigningKey.load_or_create(deep, algo="ed25519")
    release = tmp_path / "Release"
    release.write_text("Origin: x\n")
    inrelease, detached = key.sign_release(release)
    subprocess.run(
        ["gpgv", "--keyring", str(key.dearmored_path), str(inrelease)],
        check=True,
        capture_output=True,
    )
    assert detached.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    assert gpg_agents_for(key.gnupghome) == []


# --- .deb and repository files --------------------------------------------------------


def test_deb_has_control_fields_standin_marker_files_and_scripts(flat_repo: AptRepo) -> None:
    deb = flat_repo.root / f"cuda-drivers-570_{DRIVER_NEW}_amd64.deb"
    assert deb_field(deb, "Depends") == f"nvidia-driver-570-open (= {DRIVER_NEW})"
    assert deb_field(deb, "Version") == DRIVER_NEW
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True, text=True
    ).stdout
    assert "./usr/share/doc/cuda-drivers-570/STANDIN" in listing
    assert re.search(r"-rwxr-xr-x root/root .* ./usr/bin/standin-cuda-drivers", listing)
    info = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "postinst"], check=True, capture_output=True, text=True
    ).stdout
    assert info.startswith("#!/bin/sh\nset -e\n")
    driver = flat_repo.root / f"nvidia-driver-570-open_{DRIVER_NEW}_amd64.deb"
    assert deb_field(driver, "Provides") == "nvidia-driver-570"
    assert deb_field(driver, "Conflicts") == "nvidia-driver-570"
    keyring = flat_repo.root / "cuda-keyring_1.1-1_all.deb"
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(keyring), "conffiles"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert conffiles == "/etc/apt/sources.list.d/cuda.sources\n"


def test_identical_specs_build_identical_debs(tmp_path: Path) -> None:
    a = build_deb(SPECS[2], tmp_path / "a" / "x.deb")
    b = build_deb(SPECS[2], tmp_path / "b" / "x.deb")
    assert a.read_bytes() == b.read_bytes()


def test_flat_repo_has_signed_release_with_sha256_of_indexes(
    flat_repo: AptRepo, key: SigningKey
) -> None:
    root = flat_repo.root
    names = {p.name for p in root.iterdir()}
    assert {"Packages", "Packages.gz", "Release", "Release.gpg", "InRelease"} <= names
    assert len(flat_repo.debs) == 4
    release = (root / "Release").read_text()
    sha256 = release.split("SHA256:\n", 1)[1].split("SHA512:", 1)[0]
    for name in ("Packages", "Packages.gz"):
        data = (root / name).read_bytes()
        assert f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {name}\n" in sha256
    packages = (root / "Packages").read_text()
    assert f"Filename: ./nvidia-driver-570-open_{DRIVER_OLD}_amd64.deb" in packages  # both kept
    keyring = str(key.dearmored_path)
    gpgv = ["gpgv", "--keyring", keyring]
    subprocess.run([*gpgv, str(root / "InRelease")], check=True, capture_output=True)
    subprocess.run(
        [*gpgv, str(root / "Release.gpg"), str(root / "Release")], check=True, capture_output=True
    )


def test_rebuild_reuses_unchanged_debs_and_keeps_signature(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    first = build_repo(root, SPECS, key)
    assert len(first.rebuilt) == 4 and first.index_changed
    stamps = {p: p.stat().st_mtime_ns for p in root.iterdir()}

    again = build_repo(root, SPECS, key)
    assert again.rebuilt == () and not again.index_changed
    assert {p: p.stat().st_mtime_ns for p in root.iterdir()} == stamps

    changed = [*SPECS[:3], PackageSpec("cuda-keyring", "1.1-1", "all", description="v2")]
    third = build_repo(root, changed, key)
    assert third.rebuilt == ("cuda-keyring_1.1-1_all.deb",) and third.index_changed

    fewer = build_repo(root, changed[:3], key)
    assert not (root / "cuda-keyring_1.1-1_all.deb").exists()
    assert "cuda-keyring" not in (root / "Packages").read_text()
    assert fewer.rebuilt == ()


# --- real apt -----------------------------------------------------------------------------


def test_real_apt_resolves_exact_dependency_and_downloads_it(
    flat_repo: AptRepo, key: SigningKey, web: tuple[str, Path], tmp_path: Path
) -> None:
    before = system_apt_state()
    base, access_log = web
    apt = IsolatedApt(tmp_path / "apt")
    apt.add_source(flat_repo.deb822(f"{base}/cuda/", key.dearmored_path), name="cuda")

    update = apt.apt_get("update")
    assert "InRelease" in update.stdout
    assert "W:" not in update.stderr, update.stderr
    policy = apt.apt_cache("policy", "nvidia-driver-570-open").stdout
    assert f"Candidate: {DRIVER_NEW}" in policy and DRIVER_OLD in policy

    debs = apt.download("cuda-drivers-570")
    assert [d.name for d in debs] == [
        f"cuda-drivers-570_{DRIVER_NEW}_amd64.deb",
        f"nvidia-driver-570-open_{DRIVER_NEW}_amd64.deb",
    ]
    assert deb_field(debs[1], "Version") == DRIVER_NEW
    # An explicit older version of the dependency is selectable too.
    old = apt.apt_get("install", "--download-only", "-y", f"nvidia-driver-570-open={DRIVER_OLD}")
    assert old.returncode == 0
    assert (apt.archives / f"nvidia-driver-570-open_{DRIVER_OLD}_amd64.deb").exists()

    wanted = {
        ("GET", "/cuda/InRelease", 200),
        ("GET", f"/cuda/./nvidia-driver-570-open_{DRIVER_NEW}_amd64.deb", 200),
        ("GET", f"/cuda/./nvidia-driver-570-open_{DRIVER_OLD}_amd64.deb", 200),
    }
    wait_for_access_log(access_log, lambda es: wanted <= {(e.method, e.path, e.status) for e in es})
    assert system_apt_state() == before


def test_real_apt_update_with_same_index_is_a_hit(
    flat_repo: AptRepo, key: SigningKey, web: tuple[str, Path], tmp_path: Path
) -> None:
    apt = IsolatedApt(tmp_path / "apt")
    apt.add_source(flat_repo.source_line(f"{web[0]}/cuda/", key.dearmored_path))
    apt.apt_get("update")
    rebuilt = build_repo(flat_repo.root, SPECS, key)
    assert not rebuilt.index_changed
    assert "Hit:1" in apt.apt_get("update").stdout


def test_apt_update_fails_when_signed_by_is_another_key(
    flat_repo: AptRepo, other_key: SigningKey, web: tuple[str, Path], tmp_path: Path
) -> None:
    before = system_apt_state()
    apt = IsolatedApt(tmp_path / "apt")
    apt.add_source(flat_repo.source_line(f"{web[0]}/cuda/", other_key.dearmored_path))
    update = apt.apt_get("update", check=False)
    assert update.returncode != 0
    assert f"NO_PUBKEY {flat_repo.fingerprint[-16:]}" in update.stderr + update.stdout
    assert "is not signed" in update.stderr
    failed = apt.apt_get("install", "--download-only", "-y", "cuda-drivers-570", check=False)
    assert failed.returncode != 0
    assert list(apt.archives.glob("*.deb")) == []
    assert system_apt_state() == before


def test_dists_layout_works_with_real_apt(
    key: SigningKey, web: tuple[str, Path], flat_repo: AptRepo, tmp_path: Path
) -> None:
    specs = [
        PackageSpec(
            "nvidia-container-toolkit",
            "1.17.8-1",
            depends="nvidia-container-toolkit-base (= 1.17.8-1), libnvidia-container-tools",
        ),
        PackageSpec("nvidia-container-toolkit-base", "1.17.8-1"),
        PackageSpec("libnvidia-container-tools", "1.17.8-1", depends="libnvidia-container1"),
        PackageSpec("libnvidia-container1", "1.17.8-1"),
    ]
    # Served by the same web server: build next to the flat repo.
    repo = build_repo(
        flat_repo.root.parent / "ctk", specs, key, layout="dists", suite="stable", component="main"
    )
    assert (repo.root / "dists/stable/main/binary-amd64/Packages.gz").exists()
    assert (repo.root / "pool/main/libn/libnvidia-container1").is_dir()
    apt = IsolatedApt(tmp_path / "apt")
    apt.add_source(repo.deb822(f"{web[0]}/ctk", key.dearmored_path), name="ctk")
    apt.apt_get("update")
    names = sorted(p.name.split("_")[0] for p in apt.download("nvidia-container-toolkit"))
    assert names == [
        "libnvidia-container-tools",
        "libnvidia-container1",
        "nvidia-container-toolkit",
        "nvidia-container-toolkit-base",
    ]


def test_package_spec_rejects_invalid_input() -> None:
    with pytest.raises(ValueError, match="invalid package name"):
        PackageSpec("Bad_Name", "1.0")
    with pytest.raises(ValueError, match="invalid version"):
        PackageSpec("ok", "not a version")
    with pytest.raises(ValueError, match="absolute"):
        PackageSpec("ok", "1.0", files={"relative/path": "x"})
    with pytest.raises(ValueError, match="maintainer script"):
        PackageSpec("ok", "1.0", maintainer_scripts={"postinstall": "true"})
    assert PackageSpec("ok", "2:1.0-1").deb_filename == "ok_1.0-1_amd64.deb"


def test_ensure_tools_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda tool: None if tool == "dpkg-scanpackages" else real_which(tool)
    )
    with pytest.raises(AptRepoError, match=r"apt-get install -y dpkg-dev"):
        ensure_tools(install=False)
