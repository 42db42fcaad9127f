"""Facts in autoglm_infra/stack/nvidia_stack.yaml, and clear errors for a malformed table."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stack import DEFAULT_TABLE_PATH, StackTable, StackTableError, load_stack_table
from autoglm_infra.stack.facts_table import PINNING_PACKAGE_PREFIX, parse_version

# GPUs users are likely to have (the brief's list); each must be in the table.
EXPECTED_GPU_NAMES = [
    "Tesla T4",
    "A10",
    "A10G",
    "L4",
    "L40S",
    "A100 SXM4 40GB",
    "A100 PCIe 40GB",
    "A100 SXM4 80GB",
    "A100 PCIe 80GB",
    "H100 PCIe",
    "H100 SXM5 80GB",
    "H200 SXM 141GB",
    "GeForce RTX 3090",
    "GeForce RTX 4090",
    "GeForce RTX 5090",
    "RTX 6000 Ada Generation",
    "RTX PRO 6000 Blackwell Workstation Edition",
    "Tesla V100 PCIe 16GB",
    "Tesla P100 PCIe 16GB",
]


@pytest.fixture(scope="module")
def table() -> StackTable:
    return load_stack_table()


def sourced_rows(table: StackTable) -> Iterator[tuple[str, Any]]:
    yield from ((f"os_targets[{i}]", r) for i, r in enumerate(table.os_targets))
    yield from ((f"architectures[{i}]", r) for i, r in enumerate(table.architectures))
    yield from ((f"gpus[{i}]", r) for i, r in enumerate(table.gpus))
    yield from ((f"driver_branches[{i}]", r) for i, r in enumerate(table.driver_branches))
    yield from ((f"cuda_toolkits[{i}]", r) for i, r in enumerate(table.cuda_toolkits))
    yield from ((f"cudnn[{i}]", r) for i, r in enumerate(table.cudnn))
    for i, release in enumerate(table.torch):
        yield from ((f"torch[{i}].flavours[{j}]", r) for j, r in enumerate(release.flavours))
    for i, engine in enumerate(table.engines):
        yield f"engines[{i}]", engine
        yield from ((f"engines[{i}].flavours[{j}]", r) for j, r in enumerate(engine.flavours))


# -- facts -----------------------------------------------------------------------------------


def test_every_row_has_a_source(table: StackTable) -> None:
    rows = list(sourced_rows(table))

    assert len(rows) > 50
    for where, row in rows:
        assert row.source.strip(), where


def test_every_unverified_row_says_what_is_unconfirmed(table: StackTable) -> None:
    for where, row in sourced_rows(table):
        if not row.verified:
            assert row.note.strip(), where


def test_every_raw_yaml_row_carries_source_and_verified() -> None:
    raw = yaml.safe_load(DEFAULT_TABLE_PATH.read_text(encoding="utf-8"))
    for section in ("os_targets", "architectures", "gpus", "driver_branches", "cuda_toolkits"):
        for row in raw[section]:
            assert {"source", "verified"} <= row.keys(), (section, row)


def test_driver_minimums_are_monotonic_in_cuda_version(table: StackTable) -> None:
    ordered = sorted(table.cuda_toolkits, key=lambda c: parse_version(c.version))
    for older, newer in itertools.pairwise(ordered):
        assert parse_version(older.min_driver) <= parse_version(newer.min_driver), newer.version


def test_documented_cuda_minimums(table: StackTable) -> None:
    # CUDA release notes Table 3, for the update each toolkit row pins.
    expected = {
        "12.4": "550.54.15",
        "12.6": "560.35.05",
        "12.8": "570.124.06",
        "12.9": "575.57.08",
        "13.0": "580.95.05",
        "13.1": "590.48.01",
    }
    assert {c.version: c.min_driver for c in table.cuda_toolkits} == expected


def test_every_branch_pins_a_version_of_that_branch(table: StackTable) -> None:
    for branch in table.driver_branches:
        assert branch.version.startswith(f"{branch.branch}."), branch.branch
        for family in ("ubuntu", "debian"):
            packages = branch.packages.for_family(family)
            assert packages is not None, (branch.branch, family)
            for pin in (*packages.open, *packages.proprietary):
                if pin.name.startswith(PINNING_PACKAGE_PREFIX):
                    assert pin.version.startswith(str(branch.branch))
                else:
                    assert pin.version.startswith(f"{branch.version}-"), pin


def test_branches_up_to_580_are_suffixed_and_from_590_pinned(table: StackTable) -> None:
    for branch in table.driver_branches:
        expected = "branch_suffixed" if branch.branch <= 580 else "pinning"
        assert branch.package_scheme == expected, branch.branch
        if expected == "pinning":
            ubuntu = branch.packages.for_family("ubuntu")
            assert ubuntu is not None
            assert [p.name for p in ubuntu.open][-1] == "nvidia-open"
            assert [p.name for p in ubuntu.proprietary][-1] == "cuda-drivers"


def test_auto_candidates_are_lts_or_production_only(table: StackTable) -> None:
    candidates = [b for b in table.driver_branches if b.default_candidate]

    assert [b.branch for b in candidates] == [580]
    assert all("Long Term Support" in b.lifecycle for b in candidates)


def test_580_is_the_last_branch_for_pre_turing_gpus(table: StackTable) -> None:
    for branch in table.driver_branches:
        has_pascal = "pascal" in branch.architectures
        assert has_pascal == (branch.branch <= 580), branch.branch


def test_blackwell_needs_a_driver_that_runs_cuda_12_8(table: StackTable) -> None:
    cuda_128 = table.cuda("12.8")
    assert cuda_128 is not None
    for branch in table.driver_branches:
        if "blackwell" in branch.architectures:
            # GA minimum of CUDA 12.8 (570.26); the first CUDA with Blackwell.
            assert parse_version(branch.version) >= parse_version("570.26"), branch.branch


def test_open_module_support_follows_compute_capability(table: StackTable) -> None:
    for arch in table.architectures:
        newest_cc = max(parse_version(cc) for cc in arch.compute_capabilities)
        if arch.name == "blackwell":
            assert arch.open_kernel_modules == "required"
        elif newest_cc < (7, 5):
            assert arch.open_kernel_modules == "unsupported", arch.name
        else:
            assert arch.open_kernel_modules == "supported", arch.name


def test_every_torch_flavour_referenced_by_an_engine_exists(table: StackTable) -> None:
    for engine in table.engines:
        release = table.torch_release(engine.torch_version)
        assert release is not None, engine.name
        assert engine.flavour(engine.default_flavour) is not None
        for flavour in engine.flavours:
            torch_flavour = release.flavour(flavour.name)
            assert torch_flavour is not None, (engine.name, flavour.name)
            assert set(flavour.arches) <= set(torch_flavour.arches)
            assert table.cuda(torch_flavour.cuda) is not None


def test_vllm_0_12_runs_on_pypis_torch_2_9_0_cu128_build_by_default(table: StackTable) -> None:
    vllm = table.engine("vllm", "0.12.0")

    assert vllm is not None and not vllm.default_candidate  # selectable, never auto
    assert (vllm.torch_version, vllm.default_flavour) == ("2.9.0", "cu128")
    default = vllm.flavour(vllm.default_flavour)
    assert default is not None and default.lock_profile == "vllm-cu128"


def test_every_lock_profile_in_the_table_has_a_lock(table: StackTable) -> None:
    locks = DEFAULT_LOCKS_DIR
    named = [f.lock_profile for e in table.engines for f in e.flavours if f.lock_profile]

    assert "vllm-0.33.0-cu130" in named and "vllm-0.19.1-cu128" in named
    for profile in named:
        assert (locks / f"{profile}.txt").is_file(), profile
        assert (locks / f"{profile}.in").is_file(), profile


def test_auto_candidates_have_a_lock_for_their_default_flavour(table: StackTable) -> None:
    """serve_engine_version=auto must never pick a release the python stage cannot install."""
    candidates = [e for e in table.engines if e.default_candidate]

    assert [e.version for e in table.engine_releases("vllm") if e.default_candidate] == [
        "0.33.0",
        "0.19.1",
    ]
    for engine in candidates:
        default = engine.flavour(engine.default_flavour)
        assert default is not None and default.lock_profile, engine.label


def test_current_rows_match_pypi_metadata(table: StackTable) -> None:
    """The numbers read from the wheels on PyPI (sources in the rows)."""
    current, newest = table.engine("vllm", "0.33.0"), table.engine("vllm")
    first_tf5 = table.engine("vllm", "0.19.1")
    assert current is not None and newest is not None and first_tf5 is not None
    assert newest.version == "0.34.0" and newest.torch_version == "2.14.0"
    assert not newest.default_candidate  # its flashinfer-python==0.7.3 is not on PyPI
    assert current.torch_version == "2.14.0" and first_tf5.torch_version == "2.10.0"
    torch_214 = table.torch_release("2.14.0")
    assert torch_214 is not None
    cu130 = torch_214.flavour("cu130")
    assert cu130 is not None and (cu130.cuda, cu130.pip_cudnn) == ("13.0", "9.24.0.43")
    assert {e.docker_image for e in table.engines if e.name == "vllm"} == {
        f"vllm/vllm-openai:v{v}" for v in ("0.12.0", "0.19.1", "0.33.0", "0.34.0")
    }


def test_driver_branches_590_to_615_use_the_pinning_scheme(table: StackTable) -> None:
    for number in (590, 595, 610, 615, 620):
        branch = table.branch(number)
        assert branch is not None and branch.package_scheme == "pinning", number
        ubuntu = branch.packages.for_family("ubuntu")
        assert ubuntu is not None
        names = [p.name for p in ubuntu.open]
        assert names[0].startswith("nvidia-driver-pinning-") and names[1] == "nvidia-open"
    eols = {b.branch: b.eol for b in table.driver_branches}
    assert (eols[570], eols[580], eols[595], eols[610], eols[620]) == (
        "2026-02", "2028-06", "2027-03", "2026-08", "2029-09"
    )  # fmt: skip


def test_supported_os_targets_and_repo_paths(table: StackTable) -> None:
    paths = {(o.distro, o.version, o.arch): o.repo_path for o in table.os_targets}

    assert paths == {
        ("ubuntu", "22.04", "x86_64"): "ubuntu2204/x86_64",
        ("ubuntu", "22.04", "aarch64"): "ubuntu2204/sbsa",
        ("ubuntu", "24.04", "x86_64"): "ubuntu2404/x86_64",
        ("ubuntu", "24.04", "aarch64"): "ubuntu2404/sbsa",
        ("debian", "12", "x86_64"): "debian12/x86_64",
    }


def test_the_gpus_users_are_likely_to_have_are_known(table: StackTable) -> None:
    names = {g.name for g in table.gpus}

    assert not [name for name in EXPECTED_GPU_NAMES if name not in names]


def test_gpu_compute_capabilities_match_their_architecture(table: StackTable) -> None:
    for gpu in table.gpus:
        arch = table.architecture(gpu.architecture)
        assert arch is not None
        assert gpu.compute_capability in arch.compute_capabilities, gpu.name


def test_cudnn_packages_pin_the_full_release(table: StackTable) -> None:
    for release in table.cudnn:
        assert release.package_version.startswith(f"{release.full_version}-")
        assert release.full_version.startswith(f"{release.version}.")


# -- malformed tables ------------------------------------------------------------------------


def write_table(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    raw = yaml.safe_load(DEFAULT_TABLE_PATH.read_text(encoding="utf-8"))
    mutate(raw)
    path = tmp_path / "nvidia_stack.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_the_unmodified_table_round_trips(tmp_path: Path) -> None:
    assert load_stack_table(write_table(tmp_path, lambda raw: None)) == load_stack_table()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda raw: raw["gpus"][0].pop("source"),
            r"gpus\[0\]\.source: Field required",
        ),
        (
            lambda raw: raw["driver_branches"][2].update(version="590.48.01"),
            r"driver_branches\[2\]: .*does not start with the branch number 580",
        ),
        (
            lambda raw: raw["cuda_toolkits"][0].update(verified=False, note=""),
            r"cuda_toolkits\[0\]: .*verified: false needs a note",
        ),
        (
            lambda raw: raw["gpus"].append(dict(raw["gpus"][0])),
            r"gpus: duplicate entry '0x15f8'",
        ),
        (
            lambda raw: raw["engines"][0]["flavours"][0].update(name="cu124"),
            r"engines\[0\] cu124: torch 2\.14\.0 has no such flavour",
        ),
        (
            lambda raw: raw["cuda_toolkits"][-1].update(min_driver="560.0"),
            r"must be monotonic",
        ),
        (
            lambda raw: raw["gpus"][0].update(architecture="kepler"),
            r"gpus\[0\]\.architecture: unknown 'kepler'",
        ),
        (
            lambda raw: raw["driver_branches"][3]["packages"]["ubuntu"]["open"].reverse(),
            r"a pinning package comes first",
        ),
        (
            lambda raw: raw["os_targets"][0].update(arch="ppc64le"),
            r"os_targets\[0\]\.arch: Input should be 'x86_64' or 'aarch64'",
        ),
        (
            lambda raw: raw.update(surprise=1),
            r"surprise: Extra inputs are not permitted",
        ),
    ],
)
def test_a_malformed_table_is_a_clear_error(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    path = write_table(tmp_path, mutate)

    with pytest.raises(StackTableError, match=expected) as excinfo:
        load_stack_table(path)

    assert str(excinfo.value).startswith(f"{path} is malformed:")


def test_invalid_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("driver_branches: [\n", encoding="utf-8")

    with pytest.raises(StackTableError, match="not valid YAML"):
        load_stack_table(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StackTableError, match="cannot read the stack table"):
        load_stack_table(tmp_path / "absent.yaml")


def test_a_top_level_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n", encoding="utf-8")

    with pytest.raises(StackTableError, match="expected a mapping"):
        load_stack_table(path)
