"""`make demo`: boot two sandbox hosts, converge them end to end twice, show the 2nd is a no-op.

One host serves the tiny model from a venv under systemd (CPU engine), exposed to the
sandbox network through the TLS front (nginx, one client key); the other runs the
Docker stage with a stand-in image and is air-gapped: it reaches nothing but the sandbox,
so its Debian packages (docker.io) come from an apt-cacher-ng mirror. Every stage of
deploys/full.py runs against real stand-ins on the sandbox bridge (signed apt repos,
model hub, PyPI-style index, apt mirror).

`--name NAME --net N` runs the same demo in another sandbox (inventory under its state
dir), so it can be tried beside the default one.

Hosts stay up afterwards (`make sandbox-down` removes them); running the demo again
reuses them, so its first converge is then itself a re-run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoglm_testbed.converge import describe_failure, run_pyinfra
from autoglm_testbed.hosts import HostSpec, Sandbox
from autoglm_testbed.world import ROOT, boot_world, stop_detached_standins

INVENTORY = ROOT / "inventories" / "sandbox.py"
FRONT_PORT = 8443
CLIENT = "demo-client"


def demo_sandbox(name: str = "demo", net: int = 1) -> Sandbox:
    return Sandbox(name, net=net, state_dir=ROOT / ".sandbox" / name)


def inventory_for(sandbox: Sandbox) -> Path:
    return INVENTORY if sandbox.name == "demo" else sandbox.state_dir / "inventory.py"


def down(sandbox: Sandbox) -> int:
    """Stop the demo's stand-in servers and remove its hosts (`make sandbox-down`)."""
    stop_detached_standins(sandbox)
    sandbox.down()
    inventory_for(sandbox).unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoglm_testbed.demo")
    parser.add_argument("--down", action="store_true", help="remove the demo's hosts and servers")
    parser.add_argument("--name", default="demo", help="sandbox name (default demo)")
    parser.add_argument("--net", type=int, default=1, help="10.231.<net>.0/24 (default 1)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sandbox = demo_sandbox(args.name, args.net)
    if args.down:
        return down(sandbox)
    inventory = inventory_for(sandbox)
    print("==> booting sandbox hosts (one serves from a venv, one from Docker, air-gapped)")
    specs = [HostSpec(), HostSpec(docker=True, air_gapped=True)]
    world = boot_world(sandbox, specs, detached=True)
    standins = world.standins
    print(f"    NVIDIA repository stand-in: {standins.nvidia_repo.base_url}")
    print(f"    model hub stand-in:         {standins.hub.url} (a tiny real model)")
    print(f"    PyPI-style index:           {standins.pypi.index_url}")
    print(f"    container toolkit repo:     {standins.toolkit_repo.base_url}")
    if standins.apt_mirror is not None:
        print(f"    Debian archive mirror:      {standins.apt_mirror.url} (apt-cacher-ng)")
    venv_host = next(h for h in world.hosts if not h.docker)
    secrets_dir = sandbox.state_dir / "expose"
    world.host_data[venv_host.name].update(
        serve_expose=f"{venv_host.address}:{FRONT_PORT}",
        serve_expose_clients=[CLIENT],
        serve_expose_secrets_dir=str(secrets_dir),
    )
    world.write_inventory(inventory)
    for h in world.hosts:
        mode = f"{world.host_data[h.name]['serve_mode']} mode"
        gap = ", air-gapped: only the sandbox is reachable" if h.air_gapped else ""
        print(f"    {h.name}: root@{h.address} ({mode}{gap})")

    shown = inventory.relative_to(ROOT)
    print(f"==> converge 1: pyinfra {shown} deploys/full.py")
    first = run_pyinfra(inventory)
    if first.returncode != 0:
        print(describe_failure(first), file=sys.stderr)
        return 1
    print(f"    {len(first.changed())} operations changed in {first.seconds:.1f} s")

    print("==> converge 2 (must change nothing)")
    second = run_pyinfra(inventory)
    if second.returncode != 0:
        print(describe_failure(second), file=sys.stderr)
        return 1
    changed = second.changed()
    print(f"    {len(changed)} operations changed in {second.seconds:.1f} s")
    if changed:
        print("    NOT idempotent, changed on the second run:", *changed, sep="\n      ")
        return 1

    print("==> summary")
    print(f"    hosts: {', '.join(h.name for h in world.hosts)}")
    print(f"    first converge {first.seconds:.1f} s, no-op re-run {second.seconds:.1f} s")
    print(f"    engine:   http://127.0.0.1:8000/v1 on {venv_host.name} (loopback only)")
    print(f"    front:    https://{venv_host.address}:{FRONT_PORT}/v1 (client key: {CLIENT})")
    print(
        f'    curl:     curl --cacert {secrets_dir}/ca.crt -H "Authorization: Bearer '
        f'$(cat {secrets_dir}/clients/{CLIENT}.key)" '
        f"https://{venv_host.address}:{FRONT_PORT}/v1/models"
    )
    print(f"    smoke:    .venv/bin/pyinfra {shown} deploys/verify.py -y")
    print(
        "    API key:  .venv/bin/python -m autoglm_testbed.hosts ssh "
        f"{venv_host.name} -- cat /etc/autoglm/credentials/api-key"
    )
    print(f"    doctor:   .venv/bin/pyinfra {shown} deploys/doctor.py -y")
    print(f"    try:      .venv/bin/pyinfra {shown} deploys/full.py -y")
    print(f"    ssh:      .venv/bin/python -m autoglm_testbed.hosts ssh {world.hosts[0].name}")
    teardown = (
        "make sandbox-down"
        if sandbox.name == "demo"
        else (f".venv/bin/python -m autoglm_testbed.demo --down --name {sandbox.name}")
    )
    print(f"    teardown: {teardown}   (hosts and the stand-ins stay up until then)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
