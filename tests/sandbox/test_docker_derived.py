"""The derived image, built for real on a sandbox Docker host from a hash lock.

Real parts: Debian's docker.io on one sandbox host; a base image with python3 and pip
made offline from the controller's Debian packages (testbed/python_base_image.py, a
`docker save` tarball pinned by image ID, loaded by the stage's tarball path); the
session's pypiserver stand-in on the sandbox bridge as `pip_index_url`. The lock is a
real one-package hash lock (shellingham 1.5.4 with its published sha256s, as the CPU
lock pins it). One host goes through: build, serve, no-op second converge; then a lock
with a wrong hash, whose build fails naming the lock while the old container serves on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.stages.docker import files as df
from autoglm_infra.stages.docker.args import CONTAINER_NAME
from autoglm_infra.stages.python_env.venv import CPU_PROFILE, load_lock
from autoglm_testbed.converge import converge_twice, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.python_base_image import PythonBaseImage, build_python_image
from autoglm_testbed.waiting import health_of, unit_properties
from autoglm_testbed.world import Standins, controller_address, docker_host_data

DEPLOY = "deploys/docker.py"
UNIT = "autoglm-docker.service"
API_KEY = "sk-test-" + "6" * 40
PACKAGE, VERSION = "shellingham", "1.5.4"


@dataclass
class World:
    host: SandboxHost
    base: PythonBaseImage
    locks: Path
    data: dict[str, object]
    tmp: Path

    def inventory(self, **extra: object) -> Path:
        path = self.tmp / "inventory.py"
        write_inventory(path, [self.host], {}, {**self.data, **extra})
        return path


@pytest.fixture(scope="module", autouse=True)
def api_key_on_controller() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOGLM_API_KEY", API_KEY)
        yield


def lock_text(hashes: tuple[str, ...]) -> str:
    pins = "".join(f" \\\n    --hash=sha256:{h}" for h in hashes)
    return f"# import-check: {PACKAGE}\n{PACKAGE}=={VERSION}{pins}\n"


@pytest.fixture(scope="module")
def world(
    sandbox: Sandbox,
    sandbox_hosts: Callable[..., list[SandboxHost]],
    standins: Standins,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    (host,) = sandbox_hosts(1, docker=True)
    host.ssh("mkdir -p /srv/autoglm/models/AutoGLM-Phone-9B && echo {} > "
             "/srv/autoglm/models/AutoGLM-Phone-9B/config.json")  # fmt: skip
    tmp = tmp_path_factory.mktemp("docker-derived")
    locks = tmp / "locks"
    locks.mkdir()
    cpu_lock = load_lock(CPU_PROFILE, DEFAULT_LOCKS_DIR)
    (pin,) = [r for r in cpu_lock.requirements if r.name == PACKAGE]
    assert pin.version == VERSION
    (locks / "test-derived.txt").write_text(lock_text(pin.hashes))
    # the same pin, but no hash of any file the index serves
    (locks / "test-tampered.txt").write_text(lock_text(("0" * 64,)))
    base = build_python_image()
    data = {
        **docker_host_data(standins),
        "docker_image": base.image_id,
        "docker_image_tarball": str(base.tarball),
        "docker_command": base.command,
        "docker_health_cmd": None,  # the stage's default: python3 probes /health
        "docker_derived_lock": "test-derived",
        "docker_locks_dir": str(locks),
        "pip_index_url": standins.pypi.index_url,
        "pip_trusted_hosts": [controller_address(sandbox)],
    }
    return World(host, base, locks, data, tmp)


def inspect(host: SandboxHost) -> dict[str, Any]:
    doc = json.loads(host.ssh(f"docker inspect {CONTAINER_NAME}").stdout)
    return dict(doc[0])


def derived_tags(host: SandboxHost) -> list[str]:
    out = host.ssh("docker images --format '{{.Repository}}:{{.Tag}}' autoglm/engine").stdout
    return sorted(out.split())


def test_derived_image_is_built_from_the_lock_and_serves(world: World) -> None:
    host = world.host
    first, _second = converge_twice(world.inventory(), DEPLOY)  # 2nd: no change, no build
    assert any("build autoglm/engine:derived-" in name for name in first.changed())
    (tag,) = derived_tags(host)
    doc = inspect(host)
    assert doc["Config"]["Image"] == tag
    assert doc["State"]["Health"]["Status"] == "healthy"
    assert doc["Config"]["User"] == "2000:0" and doc["HostConfig"]["ReadonlyRootfs"] is True

    # the locked package, at the locked version, in the running container, not in the base
    probe = f"import importlib.metadata as m, {PACKAGE}; print(m.version('{PACKAGE}'))"
    found = host.ssh(f'docker exec {CONTAINER_NAME} python3 -c "{probe}"').stdout.strip()
    assert found == VERSION
    base = host.ssh(
        f'docker run --rm --network none {world.base.image_id} python3 -c "import {PACKAGE}"',
        check=False,
    )
    assert base.returncode != 0 and "ModuleNotFoundError" in base.stderr
    in_context = host.ssh(f"cat {df.DERIVED_LOCK}").stdout
    assert in_context == (world.locks / "test-derived.txt").read_text()
    served = "import urllib.request as u;print(u.urlopen('http://127.0.0.1:8000/health').read())"
    assert host.ssh(f'python3 -c "{served}"').stdout.strip() == "b'ok\\n'"


def test_tampered_hash_fails_naming_the_lock_and_old_container_serves(world: World) -> None:
    host = world.host
    before = inspect(host)
    unit_before = host.ssh(f"cat /etc/systemd/system/{UNIT}").stdout
    run = run_pyinfra(world.inventory(docker_derived_lock="test-tampered"), DEPLOY)
    assert run.returncode != 0
    assert "DO NOT MATCH THE HASHES" in run.stderr  # pip's own words, from the build log
    assert "docker_derived_lock=test-tampered" in run.stderr
    assert str(world.locks / "test-tampered.txt") in run.stderr
    assert df.DERIVED_LOCK in run.stderr
    assert "Traceback" not in run.stderr

    after = inspect(host)
    assert after["Id"] == before["Id"] and after["Config"]["Image"] == before["Config"]["Image"]
    assert host.ssh(f"cat /etc/systemd/system/{UNIT}").stdout == unit_before
    assert len(derived_tags(host)) == 1  # nothing half-built was tagged
    # the old container serves on: healthy, and the unit still `active` (not restarted)
    assert health_of(inspect(host)) == "healthy"
    assert unit_properties(host, UNIT, "ActiveState")["ActiveState"] == "active"
