"""`make demo`: boot two sandbox hosts, converge them end to end twice, show the 2nd is a no-op.

One host serves the tiny model from a venv under systemd (CPU engine); the other runs the
Docker stage with a stand-in image. Every stage of deploys/full.py runs against real
stand-ins on the sandbox bridge (signed apt repos, model hub, PyPI-style index).

Hosts stay up afterwards (`make sandbox-down` removes them); running the demo again
reuses them, so its first converge is then itself a re-run.
"""

from __future__ import annotations

import sys

from autoglm_infra.testbed.converge import describe_failure, run_pyinfra
from autoglm_infra.testbed.hosts import HostSpec, Sandbox
from autoglm_infra.testbed.world import ROOT, boot_world, stop_detached_standins

INVENTORY = ROOT / "inventories" / "sandbox.py"


def demo_sandbox() -> Sandbox:
    return Sandbox("demo", net=1, state_dir=ROOT / ".sandbox" / "demo")


def down() -> int:
    """Stop the demo's stand-in servers and remove its hosts (`make sandbox-down`)."""
    sandbox = demo_sandbox()
    stop_detached_standins(sandbox)
    sandbox.down()
    INVENTORY.unlink(missing_ok=True)
    return 0


def main() -> int:
    if sys.argv[1:] == ["--down"]:
        return down()
    sandbox = demo_sandbox()
    print("==> booting sandbox hosts (one serves from a venv, one from Docker)")
    world = boot_world(sandbox, [HostSpec(), HostSpec(docker=True)], detached=True)
    standins = world.standins
    print(f"    NVIDIA repository stand-in: {standins.nvidia_repo.base_url}")
    print(f"    model hub stand-in:         {standins.hub.url} (a tiny real model)")
    print(f"    PyPI-style index:           {standins.pypi.index_url}")
    print(f"    container toolkit repo:     {standins.toolkit_repo.base_url}")
    world.write_inventory(INVENTORY)
    for h in world.hosts:
        print(f"    {h.name}: root@{h.address} ({world.host_data[h.name]['serve_mode']} mode)")

    print(f"==> converge 1: pyinfra {INVENTORY.relative_to(ROOT)} deploys/full.py")
    first = run_pyinfra(INVENTORY)
    if first.returncode != 0:
        print(describe_failure(first), file=sys.stderr)
        return 1
    print(f"    {len(first.changed())} operations changed in {first.seconds:.1f} s")

    print("==> converge 2 (must change nothing)")
    second = run_pyinfra(INVENTORY)
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
    venv_host = next(h for h in world.hosts if not h.docker)
    print(f"    endpoint: http://127.0.0.1:8000/v1 on {venv_host.name} (loopback only)")
    print(f"    smoke:    .venv/bin/pyinfra {INVENTORY.relative_to(ROOT)} deploys/verify.py -y")
    print(
        "    API key:  .venv/bin/python -m autoglm_infra.testbed.hosts ssh "
        f"{venv_host.name} -- cat /etc/autoglm/credentials/api-key"
    )
    print(f"    doctor:   .venv/bin/pyinfra {INVENTORY.relative_to(ROOT)} deploys/doctor.py -y")
    print(f"    try:      .venv/bin/pyinfra {INVENTORY.relative_to(ROOT)} deploys/full.py -y")
    print(
        f"    ssh:      .venv/bin/python -m autoglm_infra.testbed.hosts ssh {world.hosts[0].name}"
    )
    print(
        "    teardown: make sandbox-down   (hosts and the repository stand-in stay up until then)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
