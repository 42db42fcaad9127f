"""The NVIDIA stand-in repository has NVIDIA's published shapes, read by real apt."""

from __future__ import annotations

import pytest

from autoglm_infra.testbed.apt_repo import IsolatedApt, SigningKey, build_repo
from autoglm_infra.testbed.nvidia_repo import (
    PublishedDataError,
    check_evidence,
    pin_file_text,
    published,
    repo_specs,
)


@pytest.fixture(scope="module")
def debian12(tmp_path_factory: pytest.TempPathFactory) -> IsolatedApt:
    work = tmp_path_factory.mktemp("nvidia-standin")
    key = SigningKey.load_or_create(work / "key")
    repo = build_repo(work / "repo", repo_specs("debian12"), key, origin="NVIDIA")
    apt = IsolatedApt(work / "apt")
    apt.add_source(repo.source_line(f"file://{work / 'repo'}", key.dearmored_path))
    apt.apt_get("update")
    return apt


def simulate(apt: IsolatedApt, *args: str, pin: str | None = None) -> dict[str, str]:
    prefs = apt.workdir / "preferences.d" / "nvidia-driver-pin"
    if pin:
        prefs.write_text(pin_file_text(pin))
    else:
        prefs.unlink(missing_ok=True)
    out = apt.apt_get("-s", "install", "--no-install-recommends", *args).stdout
    return {
        line.split()[1]: line.split("(", 1)[1].split()[0]
        for line in out.splitlines()
        if line.startswith("Inst ")
    }


def test_every_entry_names_its_evidence() -> None:
    check_evidence(published())  # also run on load
    broken = {"sources": {}, "pin_file": {"packages": "x"}, "repos": []}
    with pytest.raises(PublishedDataError, match="needs a source"):
        check_evidence(broken)


def test_unpinned_branch_meta_pulls_the_newest_branch(debian12: IsolatedApt) -> None:
    """NVIDIA forum 353805: cuda-drivers-580 lands 590+ components; same for nvidia-open-580."""
    for meta in ("cuda-drivers-580=580.95.05-1", "nvidia-open-580=580.95.05-1"):
        landed = simulate(debian12, meta)
        assert landed[meta.split("=")[0]] == "580.95.05-1"
        driver = landed.get("nvidia-driver-cuda")
        assert driver is not None and not driver.startswith("580."), landed


def test_version_pin_keeps_the_whole_closure_on_the_release(debian12: IsolatedApt) -> None:
    landed = simulate(debian12, "cuda-drivers-580=580.95.05-1", pin="580.95.05-*")
    assert {"nvidia-driver", "nvidia-kernel-dkms", "libcuda1", "nvidia-smi"} <= set(landed)
    assert set(landed.values()) == {"580.95.05-1"}, landed


def test_newer_releases_and_pinning_packages_are_published(debian12: IsolatedApt) -> None:
    policy = debian12.apt_cache("policy", "nvidia-open-580", "nvidia-driver-pinning-580").stdout
    for version in ("580.95.05-1", "580.126.09-1", "580-5"):
        assert version in policy
    assert "595.71.05-1" in debian12.apt_cache("policy", "nvidia-open").stdout
