"""The NVIDIA stand-in repository has NVIDIA's published shapes, read by real apt."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from autoglm_infra.stages.nvidia import files as nf
from autoglm_infra.stages.nvidia.apt_check import (
    POLICY_MARK,
    SIMULATE_MARK,
    UPDATE_FAILED,
    Expectation,
    Offered,
    driver_release,
    judge,
    parse_policy,
    stale_closure,
)
from autoglm_testbed.apt_repo import IsolatedApt, SigningKey, build_repo
from autoglm_testbed.nvidia_repo import (
    PublishedDataError,
    check_evidence,
    pin_file_text,
    published,
    repo_specs,
)


def standin_apt(work: Path, name: str) -> IsolatedApt:
    key = SigningKey.load_or_create(work / "key")
    repo = build_repo(work / "repo", repo_specs(name), key, origin="NVIDIA")
    apt = IsolatedApt(work / "apt")
    apt.add_source(repo.source_line(f"file://{work / 'repo'}", key.dearmored_path))
    apt.apt_get("update")
    return apt


@pytest.fixture(scope="module")
def debian12(tmp_path_factory: pytest.TempPathFactory) -> IsolatedApt:
    return standin_apt(tmp_path_factory.mktemp("nvidia-standin"), "debian12")


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


# --- the run-time safety net (autoglm_infra.stages.nvidia.apt_check), on real apt output ---

OPEN_580 = Expectation(
    packages=(
        ("nvidia-open-580", "580.95.05-1"),
        ("cuda-toolkit-12-8", "12.8.1-1"),
        ("cudnn9-cuda-12", "9.10.2.21-1"),
        ("libcudnn9-cuda-12", "9.10.2.21-1"),
    ),
    driver_version="580.95.05",
    cudnn_version="9.10.2.21",
    repo_url="http://repo/debian12/x86_64/",
)


def apt_answer(apt: IsolatedApt, expect: Expectation, closure_pin: bool) -> str:
    """What check_script prints, produced by real apt against the stand-in."""
    prefs = apt.workdir / "preferences.d" / "autoglm-nvidia-pin"
    (apt.workdir / "preferences.d" / "nvidia-driver-pin").unlink(missing_ok=True)
    if closure_pin:
        exact = [p for p in expect.packages if not p[0].startswith("nvidia-")]
        prefs.write_text(nf.closure_preferences(expect.driver_version, exact, expect.cudnn_version))
    else:
        prefs.unlink(missing_ok=True)
    names = [n for n, _ in expect.packages]
    policy = apt.apt_cache("policy", *names).stdout
    args = [f"{n}={v}" for n, v in expect.packages]
    sim = apt.apt_get("-s", "install", "--no-install-recommends", *args, check=False)
    return f"{POLICY_MARK}\n{policy}{SIMULATE_MARK}\n{sim.stdout}{sim.stderr}"


def test_safety_net_passes_when_the_closure_pin_holds(debian12: IsolatedApt) -> None:
    assert judge(OPEN_580, {}, apt_answer(debian12, OPEN_580, closure_pin=True)) is None


def test_safety_net_names_every_package_apt_would_take_newer(debian12: IsolatedApt) -> None:
    message = judge(OPEN_580, {}, apt_answer(debian12, OPEN_580, closure_pin=False))
    assert message is not None and "nothing was installed" in message
    assert "nvidia-kernel-open-dkms: planned 580.95.05-*, apt would land 595.71.05-1" in message


def test_safety_net_names_the_newest_release_when_a_version_is_gone(
    debian12: IsolatedApt,
) -> None:
    gone = dataclasses.replace(
        OPEN_580, packages=(("nvidia-open-580", "580.82.07-1"),), driver_version="580.82.07"
    )
    message = judge(gone, {}, apt_answer(debian12, gone, closure_pin=True))
    assert message is not None
    assert "nvidia-open-580 580.82.07-1 is not in the repository" in message
    assert "newest 580.x is 580.126.09" in message and "nvidia_driver_version" in message


def test_installed_packages_left_at_another_release_count(debian12: IsolatedApt) -> None:
    """An upgrade that moves only the meta leaves the old driver underneath: refused."""
    installed = {"nvidia-open-580": "580.95.05-1", "nvidia-kernel-open-dkms": "580.95.05-1"}
    newer = dataclasses.replace(
        OPEN_580, packages=(("nvidia-open-580", "580.126.09-1"),), driver_version="580.126.09"
    )
    output = f"{POLICY_MARK}\nnvidia-open-580:\n  Installed: 580.95.05-1\n  Version table:\n"
    output += "     580.126.09-1 1001\n        500 http://repo Packages\n"
    output += f"{SIMULATE_MARK}\nInst nvidia-open-580 [580.95.05-1] (580.126.09-1 r [amd64])\n"
    message = judge(newer, installed, output)
    assert message is not None and "nvidia-kernel-open-dkms: planned 580.126.09-*" in message
    # moved after the transaction: fine when its candidate (under the pin) is the release
    candidate = "nvidia-kernel-open-dkms:\n  Installed: 580.95.05-1\n  Candidate: {}\n"
    moved = output.replace(SIMULATE_MARK, candidate.format("580.126.09-1") + SIMULATE_MARK)
    assert judge(newer, installed, moved, ["nvidia-kernel-open-dkms"]) is None
    stuck = output.replace(SIMULATE_MARK, candidate.format("595.71.05-1") + SIMULATE_MARK)
    assert "apt would land 595.71.05-1" in str(
        judge(newer, installed, stuck, ["nvidia-kernel-open-dkms"])
    )
    assert stale_closure(installed, "580.126.09", "", ["nvidia-open-580"]) == [
        "nvidia-kernel-open-dkms"
    ]


def test_policy_counts_only_versions_a_repository_offers() -> None:
    text = (
        "libcuda1:\n  Installed: 580.95.05-1\n  Candidate: 580.95.05-1\n  Version table:\n"
        "     595.71.05-1 500\n        500 http://r  Packages\n"
        " *** 580.95.05-1 1001\n        100 /var/lib/dpkg/status\n"
    )
    assert parse_policy(text) == {
        "libcuda1": Offered("580.95.05-1", ("595.71.05-1",), "580.95.05-1")
    }


def test_container_toolkit_and_other_software_are_not_driver_packages() -> None:
    installed = {"nvidia-container-toolkit": "1.17.8-1", "libnvidia-ml1": "595.71.05-1"}
    assert stale_closure(installed, "580.95.05", "", []) == ["libnvidia-ml1"]
    assert driver_release("cuda-toolkit-12-8", "12.8.1-1") is None


def test_update_failure_stops_with_apts_words() -> None:
    message = judge(OPEN_580, {}, f"{UPDATE_FAILED}\nE: Failed to fetch http://repo 404")
    assert message is not None and "404" in message


def test_ubuntu_shapes_unsuffixed_590_and_the_r580_open_recipe(tmp_path: Path) -> None:
    """nvidia-open (>= floor) takes the newest branch; nvidia-open-580 excludes cuda-drivers-580."""
    apt = standin_apt(tmp_path, "ubuntu2404")
    landed = simulate(apt, "nvidia-open=590.48.01-0ubuntu1")
    assert landed["nvidia-driver-open"] == "595.71.05-1ubuntu1"
    pinned = simulate(apt, "nvidia-open=590.48.01-0ubuntu1", pin="590.48.01-*")
    assert set(pinned.values()) == {"590.48.01-0ubuntu1"}
    both = apt.apt_get(
        "-s", "install", "nvidia-open-580=580.95.05-0ubuntu1",
        "cuda-drivers-580=580.95.05-0ubuntu1", check=False,
    )  # fmt: skip
    assert both.returncode != 0 and "Conflicts: cuda-drivers-580" in both.stdout


# An adopted host: its own 580.95.05 driver is kept, the stage adds CUDA and cuDNN only.
# Ubuntu's archive ships nvidia-settings on its own schedule (510.47.03-0ubuntu1 beside a
# 535 or 580 driver is common), so a driver-named package at another release is the host's.
CUDA_ONLY = dataclasses.replace(OPEN_580, packages=OPEN_580.packages[1:], driver_moves=False)
ARCHIVE_SETTINGS = {"nvidia-settings": "510.47.03-0ubuntu1"}


def test_safety_net_leaves_a_kept_drivers_untouched_packages_alone(debian12: IsolatedApt) -> None:
    answer = apt_answer(debian12, CUDA_ONLY, closure_pin=True)
    assert judge(CUDA_ONLY, ARCHIVE_SETTINGS, answer) is None
    # the same host while the stage moves the driver: that package would stay behind
    moving = dataclasses.replace(CUDA_ONLY, driver_moves=True)
    message = judge(moving, ARCHIVE_SETTINGS, answer)
    assert message is not None
    assert "nvidia-settings: planned 580.95.05-*, apt would land 510.47.03-0ubuntu1" in message


def test_module_packages_carry_dkms_source_only_where_asked(tmp_path: Path) -> None:
    """For a VM the module packages are DKMS sources that need dkms (what apt reads in the
    built repository); for nspawn hosts they stay empty, and nothing else changes."""
    key = SigningKey.load_or_create(tmp_path / "key")
    repo = build_repo(tmp_path / "repo", repo_specs("debian12", dkms=True), key, origin="NVIDIA")
    apt = IsolatedApt(tmp_path / "apt")
    apt.add_source(repo.source_line(f"file://{tmp_path / 'repo'}", key.dearmored_path))
    apt.apt_get("update")
    prefs = apt.workdir / "preferences.d" / "nvidia-driver-pin"
    prefs.write_text(pin_file_text("580.95.05-*"))
    out = apt.apt_get("-s", "install", "nvidia-open-580=580.95.05-1", check=False).stdout
    assert "nvidia-kernel-open-dkms : Depends: dkms (>= 2.1.0.0) but it is not installable" in out
    debs = list((tmp_path / "repo").rglob("nvidia-kernel-open-dkms_580.95.05-1_*.deb"))
    assert len(debs) == 1
    listing = subprocess.run(["dpkg-deb", "-c", str(debs[0])], capture_output=True, text=True)
    assert "./usr/src/nvidia-580.95.05/dkms.conf" in listing.stdout
    scripts = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(debs[0]), str(scripts)], check=True)
    assert "/usr/lib/dkms/common.postinst nvidia 580.95.05" in (scripts / "postinst").read_text()

    plain = {s.name + s.version: s for s in repo_specs("debian12")}
    with_dkms = {s.name + s.version: s for s in repo_specs("debian12", dkms=True)}
    changed = sorted({s.name for k, s in with_dkms.items() if s != plain[k]})
    assert changed == ["nvidia-kernel-dkms", "nvidia-kernel-open-dkms"]
    assert not any(s.files or "dkms (>=" in s.depends for s in plain.values()
                   if s.name.startswith("nvidia-kernel-"))  # fmt: skip
