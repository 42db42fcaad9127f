"""Fixtures that boot real Debian 12 sandbox hosts (systemd-nspawn, reached over SSH).

Needs root. One sandbox ("pytest", 10.231.2.0/24; AUTOGLM_SANDBOX_NAME and _NET override
it) serves the whole session; each test module asks `sandbox_hosts(n, docker=False)` for
fresh hosts, which are powered off and deleted when the module ends. Leftovers of a
crashed earlier session are removed first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stages.python_env.venv import load_lock
from autoglm_testbed.hosts import (
    HostSpec,
    Sandbox,
    SandboxError,
    SandboxHost,
    write_inventory,
)
from autoglm_testbed.hub_standin import HubStandin
from autoglm_testbed.nvidia_repo import NvidiaRepoStandin
from autoglm_testbed.pypi_mirror import PypiMirror, WheelCache
from autoglm_testbed.tiny_model import write_tiny_model
from autoglm_testbed.world import (
    Standins,
    controller_address,
    full_group_data,
    host_data_for,
    start_standins,
)

ROOT = Path(__file__).resolve().parents[2]
# Overridable so that several developers' sessions on one machine use separate sandboxes.
SANDBOX_NAME = os.environ.get("AUTOGLM_SANDBOX_NAME", "pytest")
SANDBOX_NET = int(os.environ.get("AUTOGLM_SANDBOX_NET", "2"))
STATE_DIR = Path(os.environ.get("AUTOGLM_SANDBOX_STATE_DIR", str(ROOT / ".sandbox" / SANDBOX_NAME)))
# Percent of one core each host may use (README: running the suite under load); unset: no cap.
CPU_QUOTA = os.environ.get("AUTOGLM_SANDBOX_CPU_QUOTA", "")
PYINFRA = str(ROOT / ".venv" / "bin" / "pyinfra")
# The repository the tiny model is published under by `tiny_hub`.
TINY_REPO = "test-org/AutoGLM-Tiny"

HostFactory = Callable[..., list[SandboxHost]]
InventoryFactory = Callable[..., Path]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/sandbox is a sandbox test, whether or not it says so."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.sandbox)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The session's sandbox: tools and base image ready, no hosts yet; torn down at the end."""
    if os.geteuid() != 0:
        pytest.fail(
            "sandbox tests need root (they mount overlays, create network namespaces and "
            "boot systemd-nspawn hosts). Run them as root, or deselect them: -m 'not sandbox'.",
            pytrace=False,
        )
    if CPU_QUOTA and not CPU_QUOTA.isdigit():
        pytest.fail(
            f"AUTOGLM_SANDBOX_CPU_QUOTA={CPU_QUOTA!r}: give a whole percent such as 50",
            pytrace=False,
        )
    try:
        sb = Sandbox(
            SANDBOX_NAME, SANDBOX_NET, STATE_DIR, cpu_quota_percent=int(CPU_QUOTA or 0) or None
        )
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)
    # A concurrent session on the same machine waits here instead of tearing our hosts down.
    with sb.exclusive():
        try:
            sb.down()  # whatever a crashed or interrupted earlier session left behind
            sb.ensure_tools()
            sb.ensure_base()
            yield sb
        except SandboxError as exc:
            pytest.fail(str(exc), pytrace=False)
        finally:
            sb.down()  # also on test failures and Ctrl-C (pytest tears fixtures down)


@pytest.fixture(scope="module")
def sandbox_hosts(sandbox: Sandbox) -> Iterator[HostFactory]:
    """Factory: `sandbox_hosts(2)` or `sandbox_hosts(1, docker=True)` boots fresh hosts.

    Hosts made through it are removed when the test module ends.
    """
    made: list[SandboxHost] = []

    def make(count: int = 1, docker: bool = False) -> list[SandboxHost]:
        try:
            hosts = sandbox.up([HostSpec(docker=docker) for _ in range(count)])
        except SandboxError as exc:
            pytest.fail(str(exc), pytrace=False)
        made.extend(hosts)
        return hosts

    yield make
    sandbox.remove(made)


@pytest.fixture(scope="module")
def tiny_hub(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStandin]:
    """A hub stand-in on the sandbox bridge serving the tiny model as TINY_REPO (per module)."""
    source = tmp_path_factory.mktemp("tiny") / "model"
    write_tiny_model(source)
    sandbox._ensure_network()  # the bridge address the server binds to
    with HubStandin(tmp_path_factory.mktemp("hub"), controller_address(sandbox)) as served:
        served.publish(TINY_REPO, source)
        yield served


@pytest.fixture
def sandbox_inventory(tmp_path: Path) -> InventoryFactory:
    """Factory: write a pyinfra inventory for some hosts and return its path."""

    def make(
        hosts: list[SandboxHost],
        host_data: dict[str, dict[str, object]] | None = None,
        group_data: dict[str, object] | None = None,
    ) -> Path:
        path = tmp_path / "sandbox_inventory.py"
        write_inventory(path, hosts, host_data or {}, group_data or {})
        return path

    return make


@pytest.fixture(scope="session")
def standins(sandbox: Sandbox) -> Iterator[Standins]:
    """Every stand-in a complete converge needs (NVIDIA repo, hub, index, toolkit repo)."""
    started = start_standins(sandbox)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def nvidia_repo(standins: Standins) -> NvidiaRepoStandin:
    """The signed NVIDIA repository stand-in, served on the sandbox bridge for the session."""
    return standins.nvidia_repo


@pytest.fixture(scope="module")
def full_world_host(
    sandbox_hosts: HostFactory, standins: Standins, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SandboxHost, Path]:
    """A fresh host and its inventory for the complete deploy against the stand-ins."""
    hosts = sandbox_hosts(1)
    inventory = tmp_path_factory.mktemp("full-world") / "inventory.py"
    write_inventory(inventory, hosts, host_data_for(hosts, standins), full_group_data(standins))
    return hosts[0], inventory


@pytest.fixture(scope="module")
def mirror(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PypiMirror]:
    """A pip index with the wheels of the CPU lock, on the sandbox bridge, for one module."""
    wheels = WheelCache().ensure(load_lock("cpu", DEFAULT_LOCKS_DIR))
    sandbox._ensure_network()  # the bridge address the index binds to
    with PypiMirror(tmp_path_factory.mktemp("pypi"), controller_address(sandbox), wheels) as served:
        yield served
