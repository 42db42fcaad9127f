"""The engine image pulled by digest through a registry mirror, then through the daemon's proxy.

Real parts on the sandbox bridge: a registry v2 stand-in (testbed/registry_standin.py)
serving the busybox stand-in image as a Docker Hub mirror, proxy.py with basic auth, and
the signed toolkit repository stand-in; Debian's docker.io on one sandbox host. One host
goes through the scenarios in order: pull through an http:// mirror (no tarball), a
second converge that pulls nothing; then the network stage's proxy keys, and a new pinned
digest whose pull the daemon sends through the proxy, with the login only in root files;
a wrong password fails the pull (old container keeps serving); unsetting the proxy keys
removes the drop-in and pulls go direct again.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoglm_infra.stages.docker.args import CONTAINER_NAME
from autoglm_infra.stages.network import files as nw
from autoglm_testbed.container_toolkit_repo import ContainerToolkitRepoStandin
from autoglm_testbed.converge import ConvergeResult, describe_failure, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.proxy import ProxyStandin
from autoglm_testbed.registry_standin import (
    RegistryImage,
    RegistryStandin,
    standin_registry_image,
)
from autoglm_testbed.standin_image import build_image
from autoglm_testbed.static_http import AccessLogEntry
from autoglm_testbed.waiting import container_state, health_of, wait_until
from autoglm_testbed.world import (
    IMAGE_CACHE,
    STANDIN_KEY_DIR,
    controller_address,
    docker_stage_data,
)

DOCKER = "deploys/docker.py"
NETWORK = "deploys/network.py"
API_KEY = "sk-test-" + "5" * 40
USER = "svc-pull"
PASSWORD = "pw-" + secrets.token_hex(10)


@dataclass
class World:
    host: SandboxHost
    address: str  # the controller on the bridge: where proxied requests come from
    registry: RegistryStandin
    proxy: ProxyStandin
    base: RegistryImage
    variant: RegistryImage
    unpulled: RegistryImage  # never pulled: the wrong-password scenario asks for it
    data: dict[str, object]
    password_file: Path
    tmp: Path

    def inventory(self, **extra: object) -> Path:
        path = self.tmp / "inventory.py"
        write_inventory(path, [self.host], {}, {**self.data, **extra})
        return path

    def proxy_keys(self) -> dict[str, object]:
        return {
            "proxy_url": self.proxy.url,
            "proxy_username": USER,
            "proxy_password_file": str(self.password_file),
        }


@pytest.fixture(scope="module", autouse=True)
def api_key_on_controller() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOGLM_API_KEY", API_KEY)
        mp.delenv("AUTOGLM_PROXY_PASSWORD", raising=False)  # the file is the source here
        yield


@pytest.fixture(scope="module")
def world(
    sandbox: Sandbox,
    sandbox_hosts: Callable[..., list[SandboxHost]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    (host,) = sandbox_hosts(1, docker=True)
    host.ssh("mkdir -p /srv/autoglm/models/AutoGLM-Phone-9B && echo {} > "
             "/srv/autoglm/models/AutoGLM-Phone-9B/config.json")  # fmt: skip
    address = controller_address(sandbox)
    state = sandbox.state_dir / "docker-pull"
    tmp = tmp_path_factory.mktemp("docker-pull")
    password_file = tmp / "proxy-password"
    password_file.write_text(PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    base = standin_registry_image("1")
    variant = standin_registry_image("2", variant="2")
    unpulled = standin_registry_image("3", variant="3")
    toolkit = ContainerToolkitRepoStandin(state / "toolkit-repo", address, STANDIN_KEY_DIR)
    toolkit.build()
    registry = RegistryStandin(state / "registry", address, [base, variant, unpulled])
    proxy = ProxyStandin(state / "proxy", address, USER, PASSWORD)
    toolkit.start()
    try:
        with registry, proxy:
            data = {
                **docker_stage_data(toolkit, build_image(IMAGE_CACHE)),
                "docker_image": base.reference(),
                "docker_image_tarball": None,
                "docker_registry_mirrors": [registry.url],
            }
            yield World(
                host, address, registry, proxy, base, variant, unpulled, data, password_file, tmp
            )
    finally:
        toolkit.stop()


def converge(inventory: Path, deploy: str, *extra: str) -> ConvergeResult:
    result = run_pyinfra(inventory, deploy, *extra)
    assert result.returncode == 0, describe_failure(result)
    return result


def pulls(entries: list[AccessLogEntry]) -> list[tuple[str, str, str, int]]:
    """(client, method, path, status) of the registry requests a pull makes (not /v2/)."""
    return [(e.client, e.method, e.path, e.status) for e in entries if e.path.count("/") > 2]


def wait_healthy(host: SandboxHost) -> None:
    wait_until(
        lambda: health_of(container_state(host, CONTAINER_NAME)),
        lambda status: status == "healthy",
        f"container {CONTAINER_NAME} healthy",
    )


def test_image_pinned_by_digest_is_pulled_through_the_mirror_once(world: World) -> None:
    host, registry, base = world.host, world.registry, world.base
    inventory = world.inventory()
    first = converge(inventory, DOCKER)
    assert any(op.startswith(f"Docker: image {base.reference()}") for op in first.changed())
    after_first = registry.requests()
    served = pulls(after_first)
    repo = f"/v2/{base.repository}"
    assert (host.address, "GET", f"{repo}/manifests/{base.digest}", 200) in served, served
    for digest in base.blob_digests:
        assert (host.address, "GET", f"{repo}/blobs/{digest}", 200) in served, served
    # pinned: the daemon never asked for a tag, and every request was answered
    assert all("/manifests/sha256:" in path for _, _, path, _ in served if "/manifests/" in path)
    assert all(status == 200 for *_, status in served)

    daemon = json.loads(host.ssh("cat /etc/docker/daemon.json").stdout)
    assert daemon["registry-mirrors"] == [registry.url]
    # finding: dockerd 20.10 uses an http:// mirror as given, no insecure-registries needed
    assert "insecure-registries" not in daemon
    image_id = host.ssh(f"docker image inspect -f '{{{{.Id}}}}' {base.reference()}").stdout
    assert image_id.strip() == base.image_id  # the same image as the `docker save` tarball
    wait_healthy(host)
    running = host.ssh(f"docker inspect -f '{{{{.Image}}}}' {CONTAINER_NAME}").stdout.strip()
    assert running == base.image_id

    second = converge(inventory, DOCKER)
    assert second.changed() == [], second.changed()
    assert registry.requests() == after_first, "the second converge must pull nothing"


def test_daemon_pulls_through_the_proxy_with_its_login_only_in_root_files(world: World) -> None:
    host, registry, proxy, variant = world.host, world.registry, world.proxy, world.variant
    inventory = world.inventory(**world.proxy_keys(), docker_image=variant.reference())
    before = len(registry.requests())
    network = converge(inventory, NETWORK, "-vvv")
    assert any("restart Docker" in op for op in network.changed()), network.changed()
    docker = converge(inventory, DOCKER, "-vvv")
    assert any(op.startswith(f"Docker: image {variant.reference()}") for op in docker.changed())

    # the proxy logged the pull, and the registry saw it come from the proxy, not the host
    target = f"{world.address}:{registry.port}/v2/{variant.repository}"
    lines = proxy.access_lines()
    assert any(f"GET {target}/manifests/{variant.digest} - 200" in line for line in lines), lines
    new_layer = variant.blob_digests[-1]
    for digest in (variant.image_id, new_layer):
        assert any(f"GET {target}/blobs/{digest} - 200" in line for line in lines), lines
    served = pulls(registry.requests()[before:])
    assert served and {client for client, *_ in served} == {world.address}, served
    wait_healthy(host)
    variant_file = host.ssh(f"docker exec {CONTAINER_NAME} cat /www/variant").stdout
    assert variant_file.strip() == "2"

    for deploy in (NETWORK, DOCKER):
        again = converge(inventory, deploy)
        assert again.changed() == [], f"{deploy}: {again.changed()}"

    # the login: never in output, argv, the unit's properties or a readable file
    for run in (network, docker):
        assert PASSWORD not in run.stderr and PASSWORD not in json.dumps(run.report)
    dropin = host.ssh(f"cat {nw.DOCKER_PROXY_DROPIN}").stdout
    assert f"EnvironmentFile={nw.NETWORK_ENV}" in dropin and PASSWORD not in dropin
    shown = host.ssh("systemctl show docker.service --no-pager; docker info 2>&1").stdout
    assert PASSWORD not in shown
    argv = host.ssh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", check=False).stdout
    assert PASSWORD not in argv
    holders = host.ssh(
        f"grep -rlsF {PASSWORD} /etc /var/lib/autoglm /run /root /tmp /srv 2>/dev/null | "
        "xargs -r stat -c '%a %U %n'", check=False,
    ).stdout.splitlines()  # fmt: skip
    assert holders, "the login must reach the host (network.env)"
    for line in holders:
        mode, owner, path = line.split(" ", 2)
        assert owner == "root" and mode.endswith("00"), f"{path} is {mode} {owner}"
    dockerd_env = host.ssh("tr '\\0' '\\n' < /proc/$(pidof dockerd)/environ").stdout
    assert f"HTTP_PROXY=http://{USER}:" in dockerd_env  # the daemon really has the proxy


def test_wrong_proxy_password_fails_the_pull_and_keeps_the_old_container(world: World) -> None:
    host, registry, proxy, unpulled = world.host, world.registry, world.proxy, world.unpulled
    wrong = world.tmp / "wrong-password"
    wrong.write_text("not-" + PASSWORD + "\n")
    os.chmod(wrong, 0o600)
    keys = {**world.proxy_keys(), "proxy_password_file": str(wrong)}
    inventory = world.inventory(**keys, docker_image=unpulled.reference())
    converge(inventory, NETWORK)
    failures = proxy.auth_failures()
    before = len(registry.requests())
    result = run_pyinfra(inventory, DOCKER)
    assert result.returncode != 0
    # dockerd tries the mirror, then Docker Hub, both through the proxy: both refused
    assert "Proxy Authentication Required" in result.stderr, result.stderr[-2000:]
    assert "dockerd went docker_registry_mirrors" in result.stderr  # our hint names the route
    assert "Traceback" not in result.stderr
    assert proxy.auth_failures() > failures
    assert not [p for p in pulls(registry.requests()[before:]) if unpulled.digest in p[2]]
    # the container of the last good converge keeps serving
    wait_healthy(host)
    assert host.ssh(f"docker exec {CONTAINER_NAME} cat /www/variant").stdout.strip() == "2"


def test_unset_proxy_removes_the_drop_in_and_pulls_go_direct_again(world: World) -> None:
    host, registry, unpulled = world.host, world.registry, world.unpulled
    inventory = world.inventory(docker_image=unpulled.reference())
    network = converge(inventory, NETWORK)
    assert any("restart Docker" in op for op in network.changed()), network.changed()
    for path in (nw.DOCKER_PROXY_DROPIN, nw.NETWORK_ENV):
        assert host.ssh(f"test -e {path}", check=False).returncode == 1, f"{path} left behind"
    dockerd_env = host.ssh("tr '\\0' '\\n' < /proc/$(pidof dockerd)/environ").stdout
    assert "HTTP_PROXY" not in dockerd_env
    before = len(registry.requests())
    converge(inventory, DOCKER)
    served = pulls(registry.requests()[before:])
    repo = f"/v2/{unpulled.repository}"
    assert (host.address, "GET", f"{repo}/manifests/{unpulled.digest}", 200) in served, served
    wait_healthy(host)
    assert host.ssh(f"docker exec {CONTAINER_NAME} cat /www/variant").stdout.strip() == "3"
