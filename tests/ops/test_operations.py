"""Our operations against pyinfra's @fake connector: exact commands, or a noop."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage

from autoglm_infra.common.snapshot import FileState, PackageState
from autoglm_infra.pyinfra_ext.operations import apt_pinned, put_file
from autoglm_infra.stages.nvidia.ops import persistence_mode

HOST = "@fake/gpu-1"


def run_op(op: Callable[..., Any], **kwargs: Any) -> tuple[bool, list[str]]:
    """(changed, commands run) for one operation on a fake host."""
    inventory = Inventory(([(HOST, {"fake_delay": 0, "fake_delay_jitter": 0})], {}))
    state = State(inventory, Config())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    result = add_op(state, op, **kwargs)
    state.set_stage(StateStage.Execute)
    run_ops(state)
    state.set_stage(StateStage.Disconnect)
    host = inventory.get_host(HOST)
    commands = [str(c) for c in host.connector.executed_commands]
    disconnect_all(state)
    return result[host].did_change(), commands


CONTENT = b"blacklist nouveau\n"
GOOD = FileState(hashlib.sha256(CONTENT).hexdigest(), "644", "root", "root")


def test_put_file_noop_when_identical() -> None:
    changed, commands = run_op(put_file, path="/etc/x.conf", content=CONTENT, current=GOOD)
    assert not changed
    assert commands == []


def test_put_file_only_fixes_mode() -> None:
    wrong_mode = FileState(GOOD.sha256, "600", "root", "root")
    changed, commands = run_op(put_file, path="/etc/x.conf", content=CONTENT, current=wrong_mode)
    assert changed
    assert commands == ["chmod 644 /etc/x.conf && chown root:root /etc/x.conf"]


def test_put_file_uploads_aside_then_renames() -> None:
    changed, commands = run_op(put_file, path="/etc/x.conf", content=CONTENT, current=None)
    assert changed
    assert commands[-1].endswith("mv -f /etc/x.conf.autoglm-new /etc/x.conf")

    assert not any(c.startswith("install -m") for c in commands)


def test_put_file_private_temp_is_never_world_readable() -> None:
    changed, commands = run_op(
        put_file, path="/etc/secret", content=b"s3cret", current=None, mode="600"
    )
    assert changed
    create = "install -m 600 -o root -g root /dev/null /etc/secret.autoglm-new"
    assert create in commands
    assert not any("s3cret" in c for c in commands)


WANTED = [("cuda-drivers-570", "570.172.08-1"), ("nvidia-driver-570-open", "570.172.08-1")]


def test_apt_pinned_noop_when_installed_and_held() -> None:
    installed = {n: PackageState(v, True) for n, v in WANTED}
    changed, commands = run_op(apt_pinned, packages=WANTED, installed=installed)
    assert not changed
    assert commands == []


def test_apt_pinned_only_holds_when_versions_right() -> None:
    installed = {n: PackageState(v, False) for n, v in WANTED}
    changed, commands = run_op(apt_pinned, packages=WANTED, installed=installed)
    assert changed
    assert commands == ["apt-mark hold cuda-drivers-570 nvidia-driver-570-open >/dev/null"]


def test_apt_pinned_upgrade_releases_installs_removes_and_rehold() -> None:
    installed = {
        "cuda-drivers-550": PackageState("550.163.01-1", True),
        "nvidia-driver-550-open": PackageState("550.163.01-1", True),
    }
    changed, commands = run_op(
        apt_pinned, packages=WANTED, installed=installed,
        remove=["cuda-drivers-550", "nvidia-driver-550-open"], state_file="/var/lib/a/held",
    )  # fmt: skip
    assert changed
    assert commands[0] == "apt-mark unhold cuda-drivers-550 nvidia-driver-550-open"
    install = next(c for c in commands if "apt-get install" in c)
    for part in ("cuda-drivers-570=570.172.08-1", "cuda-drivers-550-", "--allow-downgrades"):
        assert part in install
    assert "apt-mark hold cuda-drivers-570 nvidia-driver-570-open" in commands[-2]
    assert commands[-1].endswith("> /var/lib/a/held")


def test_persistence_mode_enabled_once_on_gpu_hosts_only() -> None:
    changed, commands = run_op(persistence_mode, gpu_present=True, enabled=None)
    assert changed
    assert commands[0].startswith("systemctl enable nvidia-persistenced.service")
    assert run_op(persistence_mode, gpu_present=True, enabled=GOOD) == (False, [])
    assert run_op(persistence_mode, gpu_present=False, enabled=None) == (False, [])


def test_apt_pinned_locking_package_first_then_driver_with_stale_closure() -> None:
    """Branch change 580 -> 590: pinning package alone, then the driver moving the leaves."""
    installed = {
        "nvidia-open-580": PackageState("580.95.05-1", True),
        "nvidia-kernel-open-dkms": PackageState("580.95.05-1", False),
    }
    changed, commands = run_op(
        apt_pinned, first=[("nvidia-driver-pinning-590.48.01", "590.48.01-1")],
        packages=[("nvidia-open", "590.48.01-1")], installed=installed,
        remove=["nvidia-open-580"], refresh=["nvidia-kernel-open-dkms"], update=False,
    )  # fmt: skip
    assert changed
    installs = [c for c in commands if "apt-get install" in c]
    assert len(installs) == 3 and not any("apt-get update" in c for c in commands)
    assert installs[0].endswith("--allow-downgrades nvidia-driver-pinning-590.48.01=590.48.01-1")
    assert installs[1].endswith("--allow-downgrades nvidia-open=590.48.01-1 nvidia-open-580-")
    # then whatever of the old closure is still installed, to its pinned candidate
    assert "dpkg-query" in installs[2] and "nvidia-kernel-open-dkms" in installs[2]
    assert "apt-mark auto $R" in installs[2]
    assert commands[-1] == "apt-mark hold nvidia-driver-pinning-590.48.01 nvidia-open >/dev/null"
