"""When the driver stage reboots: only for what a running kernel cannot change otherwise."""

from __future__ import annotations

import pytest
from pyinfra.api import FunctionCommand

from autoglm_infra.stages.nvidia.ops import bounded_reboot, reboot_reasons, reported_wait


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


class _Host:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log_styled(self, text: str, **_: object) -> None:
        self.lines.append(text)


def test_a_host_that_never_comes_back_fails_in_one_line_not_a_traceback() -> None:
    def never_back(state: object, host: object) -> None:
        raise Exception("Server did not reboot in time (reboot_timeout=600s)")

    host = _Host()
    assert reported_wait(never_back, 600)(None, host) is False
    assert host.lines and "did not answer SSH within 600 s of the reboot" in host.lines[0]
    assert reported_wait(lambda state, host: None, 600)(None, host) is True


def test_other_errors_of_the_wait_are_not_hidden() -> None:
    def broken(state: object, host: object) -> None:
        raise ValueError("something else")

    with pytest.raises(ValueError, match="something else"):
        reported_wait(broken, 600)(None, _Host())


def test_the_stage_reboot_is_pyinfras_with_its_wait_wrapped() -> None:
    names = [
        c.function.__name__ if isinstance(c, FunctionCommand) else type(c).__name__
        for c in bounded_reboot(30)
    ]
    assert "wait_and_reconnect" not in names and "wait_for_host" in names
    assert "StringCommand" in names  # the reboot itself
    assert names.index("StringCommand") < names.index("wait_for_host")
