"""Preflight refuses hosts below the configured minimums, naming the key and the fix."""

from __future__ import annotations

from autoglm_infra.common.host_profile import HostProfile, PciGpu
from autoglm_infra.stages.preflight.problems import Minimums, preflight_problems, resource_warnings

GIB_KIB = 1024 * 1024
BIG = HostProfile(
    os_id="debian",
    os_version="12",
    arch="x86_64",
    cpus=32,
    mem_kib=128 * GIB_KIB,
    disk_path="/srv",
    disk_free_kib=500 * GIB_KIB,
    gpus=(PciGpu("0000:07:00.0", "0x2330", "0x030200"),),
    systemd_booted=True,
)


def test_big_host_passes_without_warnings() -> None:
    assert preflight_problems(BIG) == []
    assert resource_warnings(BIG) == []


def test_small_host_is_refused_per_resource_with_the_key_to_change() -> None:
    small = HostProfile(**{**BIG.__dict__, "cpus": 2, "mem_kib": 8 * GIB_KIB})
    problems = preflight_problems(small)
    assert any("2 CPU cores, preflight_min_cpus is 4" in p for p in problems)
    assert any("8.0 GiB RAM, preflight_min_mem_gib is 16" in p for p in problems)


def test_too_little_disk_names_where_model_dir_lives() -> None:
    tight = HostProfile(**{**BIG.__dict__, "disk_free_kib": 10 * GIB_KIB})
    (problem,) = preflight_problems(tight)
    assert "10.0 GiB free at /srv" in problem and "preflight_min_disk_gib is 40" in problem
    assert preflight_problems(tight, minimums=Minimums(disk_gib=5)) == []


def test_below_recommended_warns_only() -> None:
    modest = HostProfile(**{**BIG.__dict__, "cpus": 8, "mem_kib": 32 * GIB_KIB})
    assert preflight_problems(modest) == []
    (warning,) = resource_warnings(modest)
    assert "recommended 16 / 64 GiB" in warning
