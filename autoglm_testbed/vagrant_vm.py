"""The local VM: box, libvirtd, network, stand-ins and `vagrant up` (used by `make vagrant`,
autoglm_testbed/vagrant_driver.py), its boot check and its teardown.

The VM runs its own kernel (unlike the nspawn sandbox hosts): vagrant-libvirt with KVM
where a KVM vCPU really runs, qemu's software emulation (TCG) where not. It sits on a
libvirt NAT network this run defines (bridge `ag-<name>-br`, 10.231.<net>.0/24), whose
gateway address is where the demo's stand-in servers listen (signed NVIDIA repository,
model hub, PyPI-style index, container toolkit repository).

    python -m autoglm_testbed.vagrant_vm --boot-check   # make vagrant-boot (CI)
    python -m autoglm_testbed.vagrant_vm --down         # make vagrant-down

The VM stays up afterwards: `vagrant ssh`, `pyinfra inventories/vagrant.py ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from autoglm_infra.stages.nvidia.files import NOUVEAU_BLACKLIST
from autoglm_testbed.converge import pyinfra_bin
from autoglm_testbed.hosts import (
    DEBIAN_SUITES,
    Sandbox,
    SandboxError,
    _alive,
    _atomic_write,
    _proc_stat,
    _run,
    _tail,
)
from autoglm_testbed.kvm_probe import ProbeResult, probe_kvm
from autoglm_testbed.vagrant_box import (
    BOX_NAME,
    Box,
    add_box,
    box_name,
    debian_version,
    ensure_box,
    kernel_release,
)
from autoglm_testbed.world import (
    ROOT,
    Standins,
    full_group_data,
    start_standins,
    stop_detached_standins,
)

log = logging.getLogger(__name__)

MACHINE = "local"
LIBVIRT_URI = "qemu:///system"
LIBVIRTD_ANSWER_S = 120
LOCAL_STATE = ROOT / ".vagrant" / "autoglm-local.json"
INVENTORY = ROOT / "inventories" / "vagrant.py"
MACHINE_ID = ROOT / ".vagrant" / "machines" / MACHINE / "libvirt" / "id"  # libvirt's domain UUID
# libvirt runs qemu as libvirt-qemu, which cannot enter ~/.cache; the uploaded box stays in
# a pool per sandbox name (libvirt refuses two dir pools on one path)
POOL_PARENT = Path("/var/lib/libvirt/images")
# Bounded waits: TCG on a loaded 2-core machine boots in ~1-2 min; SSH must follow.
BOOT_TIMEOUT = {"kvm": 180, "qemu": 600}
UP_TIMEOUT = {"kvm": 600, "qemu": 1200}
REBOOT_TIMEOUT = {"kvm": 300, "qemu": 600}
VM_MEMORY_MIB = 3072
VM_CPUS = 2


@dataclass(frozen=True)
class Net:
    """The libvirt network of one sandbox: same bridge and subnet the stand-ins bind to."""

    name: str
    bridge: str
    gateway: str
    prefix: str  # "10.231.<net>"

    @property
    def address(self) -> str:
        return f"{self.prefix}.0/24"


def net_for(sandbox: Sandbox) -> Net:
    prefix = sandbox.gateway.rsplit(".", 1)[0]
    return Net(f"autoglm-{sandbox.name}", sandbox.bridge, sandbox.gateway, prefix)


def network_xml(net: Net) -> str:
    """A libvirt NAT network on the sandbox's bridge; DHCP hands out .100-.199 only."""
    return (
        f"<network><name>{net.name}</name><forward mode='nat'/>"
        f"<bridge name='{net.bridge}' stp='off' delay='0'/>"
        f"<ip address='{net.gateway}' netmask='255.255.255.0'>"
        f"<dhcp><range start='{net.prefix}.100' end='{net.prefix}.199'/></dhcp></ip></network>"
    )


def pool_for(sandbox: Sandbox) -> tuple[str, Path]:
    """The libvirt storage pool (name, directory) the sandbox's VM and box image live in."""
    name = f"autoglm-{sandbox.name}"
    return name, POOL_PARENT / name


def pool_xml(name: str, path: Path) -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"


def vm_host_data(group_data: dict[str, object], known_hosts: Path) -> dict[str, object]:
    """Host data for the local VM: the stand-in world's settings plus what a VM allows."""
    return {
        **group_data,
        "_sudo": True,  # the box logs in as `vagrant`, like the public boxes
        "serve_mode": "venv",
        # A VM can reboot (nspawn hosts cannot): the driver stage may reboot it once.
        "nvidia_reboot": "if-needed",
        # Vagrant's ssh-config turns host keys off; pyinfra keeps its own file per run.
        "ssh_known_hosts_file": str(known_hosts),
        "ssh_strict_host_key_checking": "accept-new",
    }


def local_state(
    probe: ProbeResult,
    net: Net,
    pool: str,
    console: Path,
    host_data: dict[str, object],
    boot_timeout: int | None = None,
    box: str = BOX_NAME,
) -> dict[str, object]:
    """What the Vagrantfile and inventories/vagrant.py read (.vagrant/autoglm-local.json)."""
    return {
        "box": box,
        "driver": probe.driver,
        "driver_reason": probe.reason,
        "boot_timeout": boot_timeout or BOOT_TIMEOUT[probe.driver],
        "memory": VM_MEMORY_MIB,
        "cpus": VM_CPUS,
        "network": net.name,
        "network_address": net.address,
        "pool": pool,
        "console_log": str(console),
        "host_data": host_data,
    }


# ----------------------------------------------------------------------------- libvirt


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["virsh", "-c", LIBVIRT_URI, *args], check=check, timeout=120)


def ensure_libvirtd(state_dir: Path) -> None:
    """Start virtlogd and libvirtd (daemonised) when nothing answers; remember their PIDs."""
    if virsh("version", check=False).returncode == 0:
        return
    started: list[dict[str, object]] = []
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        if not running_pids(daemon):
            Path(pidfile).unlink(missing_ok=True)  # a dead daemon's: never read its PID
            _run([daemon, "-d"])
            pid = _wait_pidfile(Path(pidfile))
            stat = _proc_stat(pid)
            started.append({"name": daemon, "pid": pid, "starttime": stat[1] if stat else 0})
    if started:  # recorded before the wait: `--down` stops them even if it times out
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "daemons.json").write_text(json.dumps(started))
    # re-attaching to running domains takes libvirtd a while on a loaded machine
    deadline = time.monotonic() + LIBVIRTD_ANSWER_S
    while virsh("version", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise SandboxError(
                f"libvirtd started but `virsh version` does not answer after "
                f"{LIBVIRTD_ANSWER_S} s; `make vagrant-down` stops it"
            )
        time.sleep(0.5)


def running_pids(name: str) -> list[int]:
    """PIDs of live processes named `name`. Not zombies: where no init runs as PID 1 (these
    machines), a stopped daemon stays a zombie, and `pgrep` counts it as running."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            named = comm.read_text().strip() == name
        except OSError:
            continue
        pid = int(comm.parent.name)
        stat = _proc_stat(pid) if named else None
        if stat is not None and _alive(pid, stat[1]):
            pids.append(pid)
    return pids


def _wait_pidfile(path: Path, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.2)
    raise SandboxError(f"{path} did not appear within {timeout:g} s")


def stop_started_daemons(state_dir: Path) -> None:
    """Stop only the libvirtd/virtlogd this tool started (PID and start time recorded)."""
    record = state_dir / "daemons.json"
    if not record.is_file():
        return
    others = virsh("list", "--name", check=False).stdout.split()
    if others:  # another checkout's VM: libvirtd manages it, so it stays
        print(f"    libvirtd left running: it manages {', '.join(others)}")
        record.unlink()
        return
    for entry in reversed(json.loads(record.read_text())):
        pid = int(entry["pid"])
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == entry["starttime"]:
            os.kill(pid, signal.SIGTERM)
            # wait for it: a `make vagrant` right after would find it still exiting,
            # start none and wait for a libvirtd that is going away
            deadline = time.monotonic() + 30
            while _alive(pid, stat[1]) and time.monotonic() < deadline:
                time.sleep(0.2)
    record.unlink()


def ensure_network(net: Net) -> None:
    active = virsh("net-list", "--name", check=False).stdout.split()
    if net.name in active:
        return
    if Path(f"/sys/class/net/{net.bridge}").exists():
        raise SandboxError(
            f"bridge {net.bridge} exists but libvirt network {net.name} is not running: "
            f"another sandbox run owns it; run `make vagrant-down` (or `make sandbox-down`)"
        )
    known = virsh("net-list", "--all", "--name", check=False).stdout.split()
    if net.name not in known:
        xml = net.name + ".xml"
        path = Path("/tmp") / xml
        path.write_text(network_xml(net))
        try:
            virsh("net-define", str(path))
        finally:
            path.unlink(missing_ok=True)
    virsh("net-start", net.name)


def remove_network(net: Net) -> None:
    known = virsh("net-list", "--all", "--name", check=False).stdout.split()
    if net.name in known:
        virsh("net-destroy", net.name, check=False)
        virsh("net-undefine", net.name, check=False)


def remove_pool(name: str, path: Path) -> None:
    """Delete the pool's volumes (the uploaded box image), the pool and its directory."""
    if name in virsh("pool-list", "--all", "--name", check=False).stdout.split():
        virsh("pool-start", name, check=False)  # volumes are listed only in a running pool
        for vol in virsh("vol-list", name, "--name", check=False).stdout.split():
            virsh("vol-delete", vol, name, check=False)
        virsh("pool-destroy", name, check=False)
        virsh("pool-undefine", name, check=False)
    shutil.rmtree(path, ignore_errors=True)


def ensure_pool(name: str, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    known = virsh("pool-list", "--all", "--name", check=False).stdout.split()
    if name not in known:
        tmp = Path("/tmp") / f"{name}.xml"
        tmp.write_text(pool_xml(name, path))
        try:
            virsh("pool-define", str(tmp))
        finally:
            tmp.unlink(missing_ok=True)
    if name not in virsh("pool-list", "--name", check=False).stdout.split():
        virsh("pool-start", name)


# ----------------------------------------------------------------------------- vagrant


def readable_tail(text: str, lines: int = 20, width: int = 240) -> str:
    """Last lines of vagrant's output without its upload progress bar or escapes."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    kept = [
        line[:width]
        for chunk in text.splitlines()
        for line in chunk.split("\r")[-1:]
        if line.strip() and not line.lstrip().startswith("Progress:")
    ]
    return "\n".join(kept[-lines:])


def vagrant(*args: str, timeout: float, log_file: Path | None = None) -> None:
    """Run vagrant in the project root; on failure or timeout raise with the output's tail."""
    argv = ["vagrant", *args]
    out = log_file or Path("/dev/null")
    with out.open("w") as fh:
        try:
            rc = subprocess.run(
                argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=timeout,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = None
    if rc == 0:
        return
    what = f"timed out after {timeout:.0f} s" if rc is None else f"exited {rc}"
    detail = readable_tail(out.read_text(errors="replace")) if log_file else ""
    raise SandboxError(f"`{' '.join(argv)}` {what}\n{detail}")


def existing_vm_state() -> dict[str, object] | None:
    """The state of the VM vagrant created earlier (None: there is none)."""
    created = MACHINE_ID.is_file()
    if not (created and LOCAL_STATE.is_file()):
        return None
    state = json.loads(LOCAL_STATE.read_text())
    return state if isinstance(state, dict) and state.get("driver") in BOOT_TIMEOUT else None


@dataclass(frozen=True)
class BootedVm:
    """The VM `boot_vm` brought up (or found running), answering SSH."""

    probe: ProbeResult
    net: Net
    boot_seconds: float
    started: float  # time.monotonic() when boot_vm began
    box: Box | None  # None: a VM that existed was kept, with whatever box it came from
    standins: Standins | None = None  # None: boot_vm(standins=False)
    box_kernel: str = ""  # the release the box's kernel carries (read while the file is there)


def boot_vm(
    sandbox: Sandbox, boot_timeout: int | None = None, standins: bool = True
) -> BootedVm | None:
    """Box, libvirtd, network, stand-ins (unless standins=False) and `vagrant up`; None
    (after saying why) when the VM did not come up within the bound."""
    state = sandbox.state_dir
    sandbox._init_state_dir()  # marks it as a sandbox state dir before anything is written
    net = net_for(sandbox)
    pool, pool_dir = pool_for(sandbox)
    started = time.monotonic()
    ensure_libvirtd(state)
    previous = existing_vm_state()
    box: Box | None = None
    box_kernel = ""
    name = box_name(sandbox.suite)
    if previous is not None and previous.get("box", BOX_NAME) != name:
        print(
            f"error: the VM in this checkout runs {previous.get('box')}, not {name}: "
            "run `make vagrant-down` first",
            file=sys.stderr,
        )
        return None
    if previous is not None:
        # Re-adding the box would delete the image volume the running VM's disk sits on.
        probe = ProbeResult(str(previous["driver"]), "as when the VM was created")
        print("==> the VM exists: keeping its box and driver (`make vagrant-down` for a new one)")
    else:
        print(
            f"==> box {name}: Debian {debian_version(sandbox.suite)} + linux-image-cloud-amd64 "
            "+ extlinux (built once, cached)"
        )
        box = ensure_box(sandbox)
        how = (
            "from the cache" if box.built_seconds is None else f"built in {box.built_seconds:.0f} s"
        )
        print(f"    {box.path} ({how})")
        ensure_pool(pool, pool_dir)
        if add_box(box, name, pool):
            print(f"    `vagrant box add {name}` done")
        box_kernel = kernel_release(box.kernel)
        probe = probe_kvm(box.kernel)
    print(f"==> hypervisor: {probe.driver} ({probe.reason})")

    print(f"==> network {net.name}: {net.bridge} {net.address}, stand-ins at {net.gateway}")
    ensure_network(net)
    # the VM has its own kernel: the NVIDIA packages' DKMS source is built for it
    world_standins = start_standins(sandbox, detached=True, nvidia_dkms=True) if standins else None
    world = full_group_data(world_standins) if world_standins else {}
    known_hosts = state / "vagrant_known_hosts"
    console = state / "console.log"
    host_data = vm_host_data(world, known_hosts)
    _atomic_write(
        LOCAL_STATE,
        json.dumps(local_state(probe, net, pool, console, host_data, boot_timeout, name)),
    )

    print(
        f"==> vagrant up {MACHINE} (driver {probe.driver}; bounded by {UP_TIMEOUT[probe.driver]} s)"
    )
    if previous is None:
        console.unlink(missing_ok=True)  # virtlogd appends: keep only this boot's lines
    boot_started = time.monotonic()
    up_log = state / "vagrant-up.log"
    try:
        vagrant("up", MACHINE, "--provider", "libvirt", timeout=UP_TIMEOUT[probe.driver],
                log_file=up_log)  # fmt: skip
    except SandboxError as exc:
        print(f"error: the VM did not come up: {exc}", file=sys.stderr)
        print(f"    console of the VM (last lines of {console}):", file=sys.stderr)
        print(_tail(console, 15), file=sys.stderr)
        print(
            "    fix: see the messages above; `make vagrant-down` removes the VM", file=sys.stderr
        )
        return None
    boot_seconds = time.monotonic() - boot_started
    print(f"    up and answering SSH in {boot_seconds:.0f} s")
    known_hosts.unlink(missing_ok=True)  # a new VM has new host keys
    return BootedVm(probe, net, boot_seconds, started, box, world_standins, box_kernel)


def reboot_problems(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What is wrong after one reboot: boot count not +1, blacklist missing, nouveau loaded."""
    problems = []
    try:
        boots = int(after["boots"]) - int(before["boots"])
    except (KeyError, ValueError):
        boots = None
    if boots != 1:
        problems.append(
            f"journalctl --list-boots went from {before.get('boots')} to {after.get('boots')}, "
            "expected exactly one more boot"
        )
    if after.get("blacklist_in_initramfs", "0") in ("0", ""):
        problems.append("the nouveau blacklist is not in the running kernel's initramfs")
    if after.get("state") not in ("running", "degraded"):
        problems.append(f"systemctl is-system-running after the reboot: {after.get('state')!r}")
    if after.get("nouveau_loaded") != "0":
        problems.append(f"nouveau loaded: {after.get('nouveau_loaded')!r}")
    return problems


# Read on the VM after the converges: what only a VM with its own kernel can show.
# `is-system-running --wait` first: after a boot, wait until every start job (the model
# service's health gate included) has finished, so nothing below reads a starting system.
KERNEL_FACTS_SCRIPT = (
    "echo state=$(timeout 900 systemctl is-system-running --wait); "
    "echo virt=$(systemd-detect-virt --vm); echo kernel=$(uname -r); "
    "echo boots=$(sudo journalctl --list-boots --no-pager -q | wc -l); "
    "echo blacklist_in_initramfs=$(sudo lsinitramfs /boot/initrd.img-$(uname -r) "
    f"| grep -c '{NOUVEAU_BLACKLIST.lstrip('/')}$'); "
    "echo nouveau_loaded=$(grep -c '^nouveau ' /proc/modules)"
)


def parse_kernel_facts(text: str) -> dict[str, str]:
    """key=value lines a fact script printed; other lines (ssh banners) are ignored."""
    facts: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            facts[key] = value
    return facts


def kernel_facts() -> dict[str, str]:
    return vagrant_ssh_facts(KERNEL_FACTS_SCRIPT)


def vagrant_ssh_facts(script: str) -> dict[str, str]:
    """key=value lines `script` prints on the VM (through `vagrant ssh`)."""
    out = subprocess.run(
        ["vagrant", "ssh", MACHINE, "-c", script], cwd=ROOT, capture_output=True,
        text=True, timeout=1000, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return parse_kernel_facts(out.stdout)


def boot_check(sandbox: Sandbox, boot_timeout: int | None = None) -> int:
    """`make vagrant-boot` (and CI): a fresh VM boots the box's own kernel from its disk and
    answers SSH and pyinfra; no stand-ins, no converge. The VM stays up for `--down`."""
    if existing_vm_state() is not None:
        print(
            "error: a VM from `make vagrant` exists in this checkout; the boot check needs a "
            "fresh one: run `make vagrant-down` first",
            file=sys.stderr,
        )
        return 1
    booted = boot_vm(sandbox, boot_timeout, standins=False)
    if booted is None:
        return 1
    box_kernel = booted.box_kernel
    domain = MACHINE_ID.read_text().strip()
    domain_xml = virsh("dumpxml", domain).stdout
    facts = vagrant_ssh_facts(BOOT_FACTS_SCRIPT)
    started = time.monotonic()
    via_pyinfra = subprocess.run(
        [pyinfra_bin(), str(INVENTORY), "exec", "-y", "--", "uname -r"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    pyinfra_seconds = time.monotonic() - started
    problems = boot_check_problems(facts, box_kernel, domain_xml, debian_version(sandbox.suite))
    printed = via_pyinfra.stdout + via_pyinfra.stderr  # pyinfra logs command output to stderr
    if via_pyinfra.returncode != 0 or f"[@vagrant/{MACHINE}] {box_kernel}\n" not in printed:
        problems.append(
            f"`pyinfra {INVENTORY.relative_to(ROOT)} exec -- uname -r` exited "
            f"{via_pyinfra.returncode} without printing {box_kernel!r}:\n"
            + readable_tail(printed, 8)
        )
    print("==> boot check")
    seen = {key: facts.get(key, "?") for key in ("kernel", "virt", "root", "boots", "state")}
    print(f"    VM `{MACHINE}` ({booted.probe.driver}), Debian {facts.get('debian', '?')}: "
          f"kernel {seen['kernel']} (the box's "
          f"{box_kernel}) under {seen['virt']}, root {seen['root']}, boots recorded "
          f"{seen['boots']}, system {seen['state']}")  # fmt: skip
    print(f"    boot to SSH {booted.boot_seconds:.0f} s, pyinfra exec {pyinfra_seconds:.0f} s, "
          f"total {time.monotonic() - booted.started:.0f} s")  # fmt: skip
    if problems:
        print("error: the boot check failed:", *problems, sep="\n    ", file=sys.stderr)
        return 1
    print("    ok; `make vagrant-down` removes the VM")
    return 0


# What a freshly booted VM must show: its own kernel from its own disk, one boot, a booted
# system, and the insecure key Vagrant swapped out on the first `vagrant up`.
BOOT_FACTS_SCRIPT = (
    "echo state=$(timeout 600 systemctl is-system-running --wait); "
    "echo virt=$(systemd-detect-virt --vm); echo kernel=$(uname -r); "
    "echo root=$(findmnt -no SOURCE /); "
    "echo boot_image=$(grep -o 'BOOT_IMAGE=[^ ]*' /proc/cmdline); "
    "echo boots=$(sudo journalctl --list-boots --no-pager -q | wc -l); "
    "echo insecure_key=$(grep -c 'vagrant insecure public key' ~/.ssh/authorized_keys); "
    "echo debian=$(. /etc/os-release; echo $VERSION_ID)"
)


def boot_check_problems(
    facts: dict[str, str], box_kernel: str, domain_xml: str, debian: str = "12"
) -> list[str]:
    """What is wrong with a fresh VM (BOOT_FACTS_SCRIPT's facts, libvirt's domain XML)."""
    problems = []
    if facts.get("debian") != debian:
        problems.append(f"/etc/os-release says Debian {facts.get('debian')!r}, not {debian}")
    if facts.get("virt") in (None, "", "none"):
        problems.append(f"systemd-detect-virt --vm names no hypervisor: {facts.get('virt')!r}")
    if not box_kernel or facts.get("kernel") != box_kernel:
        problems.append(
            f"running kernel {facts.get('kernel')!r} is not the box's installed {box_kernel!r}"
        )
    if re.search(r"<(kernel|initrd)>", domain_xml):
        problems.append("libvirt loads the kernel itself (<kernel> in the domain): no bootloader")
    if not facts.get("boot_image", "").startswith("BOOT_IMAGE="):
        problems.append("no bootloader's BOOT_IMAGE= on the kernel command line")
    if not facts.get("root", "").startswith("/dev/"):
        problems.append(f"the root file system is not on the VM's disk: {facts.get('root')!r}")
    if facts.get("boots") != "1":
        problems.append(f"journalctl --list-boots shows {facts.get('boots')!r} boots, expected 1")
    if facts.get("state") not in ("running", "degraded"):
        problems.append(f"systemctl is-system-running: {facts.get('state')!r}")
    if facts.get("insecure_key") != "0":
        problems.append(
            f"Vagrant's insecure key is still authorized ({facts.get('insecure_key')!r} lines)"
        )
    return problems


def down(sandbox: Sandbox, purge: bool = False) -> int:
    """Destroy the VM, stop the stand-ins, remove the network; the box and pool stay cached
    unless purge (then the pool, with the box image libvirt holds, goes too)."""
    state = sandbox.state_dir
    if LOCAL_STATE.is_file() and shutil.which("vagrant"):
        # the VM's qemu outlives a stopped libvirtd; only libvirtd can destroy it
        ensure_libvirtd(state)
        try:
            vagrant("destroy", "-f", MACHINE, timeout=300, log_file=state / "vagrant-down.log")
        except SandboxError as exc:
            print(f"warning: {exc}", file=sys.stderr)
    if virsh("version", check=False).returncode == 0:
        remove_network(net_for(sandbox))
        pool, pool_dir = pool_for(sandbox)
        if purge:
            remove_pool(pool, pool_dir)
        elif pool in virsh("pool-list", "--name", check=False).stdout.split():
            virsh("pool-destroy", pool, check=False)
    stop_detached_standins(sandbox)
    daemons = state / "daemons.json"
    kept = daemons.read_text() if daemons.is_file() else None
    sandbox.down()  # iptables rules, the registry entry, the state dir
    if kept is not None:
        state.mkdir(parents=True, exist_ok=True)
        daemons.write_text(kept)
        stop_started_daemons(state)
        with contextlib.suppress(OSError):
            state.rmdir()
    LOCAL_STATE.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoglm_testbed.vagrant_vm")
    parser.add_argument("--down", action="store_true", help="destroy the VM and its network")
    parser.add_argument(
        "--purge", action="store_true", help="with --down: also delete the libvirt storage pool"
    )
    parser.add_argument(
        "--boot-check", action="store_true",
        help="boot a fresh VM and check its kernel, disk and SSH; no stand-ins, no converge",
    )  # fmt: skip
    parser.add_argument("--name", default="vagrant", help="sandbox name (default vagrant)")
    parser.add_argument("--net", type=int, default=3, help="10.231.<net>.0/24 (default 3)")
    parser.add_argument(
        "--debian", choices=sorted(DEBIAN_SUITES), default="12",
        help="the box's Debian release (default 12; the converge scenarios use 12)",
    )  # fmt: skip
    parser.add_argument(
        "--boot-timeout", type=int, help="seconds vagrant waits for SSH (default 180 KVM, 600 TCG)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="    %(message)s")
    try:
        sandbox = Sandbox(
            args.name,
            net=args.net,
            state_dir=ROOT / ".sandbox" / args.name,
            suite=DEBIAN_SUITES[args.debian],
        )
        if args.down:
            return down(sandbox, purge=args.purge)
        if args.boot_check:
            return boot_check(sandbox, args.boot_timeout)
        print(
            "error: say --boot-check or --down; `make vagrant` is "
            "`python -m autoglm_testbed.vagrant_driver --deploy full`",
            file=sys.stderr,
        )
        return 2
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
