"""When the driver stage reboots: only for what a running kernel cannot change otherwise."""

from __future__ import annotations

from autoglm_infra.stages.nvidia.ops import reboot_reasons


def test_a_loaded_driver_at_the_plan_needs_no_reboot() -> None:
    assert reboot_reasons("580.95.05", True, "580.95.05", nouveau_loaded=False) == []


def test_another_or_no_loaded_driver_on_a_gpu_host_does() -> None:
    assert reboot_reasons("580.95.05", True, "570.172.08", False) == [
        "installed driver 580.95.05, loaded 570.172.08"
    ]
    assert reboot_reasons("580.95.05", True, "", False) == [
        "installed driver 580.95.05, loaded none"
    ]


def test_a_host_without_gpu_reboots_only_to_get_rid_of_a_loaded_nouveau() -> None:
    assert reboot_reasons("580.95.05", False, "", nouveau_loaded=False) == []
    assert reboot_reasons("580.95.05", False, "", nouveau_loaded=True) == [
        "nouveau is loaded (blacklisted now; gone after a reboot)"
    ]


def test_a_fresh_gpu_host_names_both_reasons() -> None:
    assert len(reboot_reasons("580.95.05", True, "", nouveau_loaded=True)) == 2
