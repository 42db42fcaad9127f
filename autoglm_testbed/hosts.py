"""Throw-away Debian 12 sandbox hosts: systemd-nspawn containers reached over real SSH.

Each host boots systemd as PID 1 on a copy-on-write overlayfs root (over one golden
debootstrap rootfs), in its own network namespace on a per-sandbox Linux bridge
(10.231.<net>.0/24, controller at .1, host i at .10+i). Works on a controller without
systemd as PID 1 and with hybrid cgroup v1; needs root.

Library::

    sb = Sandbox("demo", net=1, state_dir=Path(".sandbox/demo"))
    sb.ensure_tools(); sb.ensure_base()
    hosts = sb.up([HostSpec(), HostSpec(docker=True)])
    write_inventory(Path("inventories/sandbox.py"), hosts, {}, {})
    sb.down()

CLI::

    python -m autoglm_testbed.hosts up --name demo --net 1 --hosts 2 \\
        [--docker-hosts 1] [--state-dir .sandbox/demo] [--inventory inventories/sandbox.py]
    python -m autoglm_testbed.hosts status
    python -m autoglm_testbed.hosts ssh demo-1 -- systemctl is-system-running
    python -m autoglm_testbed.hosts down --name demo

`up` on a sandbox that already has running hosts fails with a clear message (run `down`
first); the library's `Sandbox.up` instead adds hosts to a running sandbox.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

SUITE = "bookworm"
DEBIAN_SUITES = {"12": "bookworm", "13": "trixie"}  # Debian version -> suite
BASE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "ca-certificates",
)
# Bump when the base preparation changes in a way the file table below does not show.
PREP_VERSION = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUBNET_PREFIX = "10.231"
HOST_OFFSET = 10  # host i gets .(10 + i)
MAX_HOSTS = 254 - HOST_OFFSET
REGISTRY_DIR = Path("/run/autoglm-sandbox")
LOCK_DIR = Path("/run/lock")
NSPAWN_PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "autoglm-infra" / "sandbox"
STATE_MARKER = ".autoglm-sandbox"
STOP_TIMEOUT = 30.0  # docker hosts can need 10-15 s (docker's stop timeout)
BOOT_TIMEOUT = 90.0

# binary -> Debian package that ships it
REQUIRED_TOOLS: dict[str, str] = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "iptables": "iptables",
    "zstd": "zstd",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "tar": "tar",
}

# keep owner, xattrs (file capabilities) and numeric ids exactly as debootstrap made them
_TAR = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*"]
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # keeps "ag-<name>-<i>" and "-br" <= 15 chars
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class SandboxError(RuntimeError):
    """A sandbox operation failed; the message says what and what to look at."""


class SSHCommandError(SandboxError):
    """A command run over SSH exited non-zero (the CompletedProcess is attached)."""

    def __init__(self, host: str, command: str, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        super().__init__(
            f"{host}: `{command}` exited {result.returncode}\n"
            f"stdout: {result.stdout.strip()[-2000:]}\nstderr: {result.stderr.strip()[-2000:]}"
        )


# ----------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class HostSpec:
    """A host to boot. name defaults to "<sandbox>-<index>" and must start with "<sandbox>-"."""

    name: str | None = None
    docker: bool = False
    # Forwarded traffic leaving the sandbox subnet is rejected: only the controller's
    # bridge address (the stand-ins) and other sandbox hosts are reachable.
    air_gapped: bool = False


@dataclass(frozen=True)
class SandboxHost:
    """A running sandbox host, reachable as root over SSH."""

    name: str
    address: str
    ssh_port: int
    ssh_key: Path
    known_hosts: Path
    docker: bool = False
    air_gapped: bool = False

    def ssh_argv(
        self, command: str | None = None, user: str = "root", probe: bool = False
    ) -> list[str]:
        """ssh argv for this host; probe=True (boot polling) records no host key."""
        options = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": "/dev/null" if probe else str(self.known_hosts),
            "StrictHostKeyChecking": "no" if probe else "accept-new",
            "HashKnownHosts": "no",  # plain entries, so `up` can drop them by address
            "LogLevel": "ERROR",
            # boot polling retries fast; a test's command waits for a starved sshd's banner
            "ConnectTimeout": "2" if probe else "30",
        }
        # -F /dev/null: the controller's ~/.ssh/config must not change what tests see
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.ssh_key), "-p", str(self.ssh_port)]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        argv.append(f"{user}@{self.address}")
        if command is not None:
            argv.append(command)
        return argv

    def ssh(
        self, command: str, check: bool = True, timeout: float = 60, user: str = "root"
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over SSH; raise SSHCommandError if check and rc != 0."""
        try:
            result = subprocess.run(
                self.ssh_argv(command, user=user),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise SandboxError(f"{self.name}: `{command}` timed out after {timeout} s") from exc
        if check and result.returncode != 0:
            raise SSHCommandError(self.name, command, result)
        return result

    @contextlib.contextmanager
    def forward(self, remote_port: int, timeout: float = 30) -> Iterator[int]:
        """`ssh -L` from a free controller loopback port to the host's 127.0.0.1:remote_port.

        For clients that must run on the controller (the openai package) against an
        endpoint that listens on the host's loopback only. Yields the local port.
        """
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        argv = self.ssh_argv()
        argv[-1:-1] = ["-N", "-o", "ExitOnForwardFailure=yes",
                       "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}"]  # fmt: skip
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        ) as tunnel:
            try:
                self._wait_forward(tunnel, local, remote_port, timeout)
                yield local
            finally:
                tunnel.terminate()
                try:
                    tunnel.wait(10)
                except subprocess.TimeoutExpired:
                    tunnel.kill()

    def _wait_forward(
        self, tunnel: subprocess.Popen[bytes], local: int, remote_port: int, timeout: float
    ) -> None:
        what = f"{self.name}: ssh -L {local}:127.0.0.1:{remote_port}"
        deadline = time.monotonic() + timeout
        while tunnel.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", local), timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SandboxError(f"{what} not listening after {timeout} s") from None
                time.sleep(0.2)
        err = tunnel.stderr.read().decode(errors="replace").strip() if tunnel.stderr else ""
        raise SandboxError(f"{what} exited: {err[-500:]}")


@dataclass
class _HostRecord:
    """What the state dir remembers about one host, enough for `down` from another process."""

    index: int
    name: str
    address: str
    docker: bool
    netns: str
    veth: str
    dir: str
    cgroups: list[str] = field(default_factory=list)
    pid: int = 0
    starttime: int = 0  # /proc/<pid>/stat field 22, guards against PID reuse
    air_gapped: bool = False


# ----------------------------------------------------------------------------- pure helpers


def iso_week(today: dt.date | None = None) -> str:
    year, week, _ = (today or dt.date.today()).isocalendar()
    return f"{year}-W{week:02d}"


def read_mirrors(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> tuple[str, str]:
    """(main, security) archive URLs the controller's apt uses (deb822 file), with fallbacks."""
    main = security = ""
    try:
        text = sources.read_text()
    except OSError:
        text = ""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
        uris, suites = fields.get("uris", "").split(), fields.get("suites", "").split()
        if not uris:
            continue
        if any(s.endswith("-security") for s in suites):
            security = security or uris[0]
        else:
            main = main or uris[0]
    main = (main or DEFAULT_MIRROR).rstrip("/")
    return main, (security or f"{main}-security").rstrip("/")


def base_prep_files(
    mirror: str, security_mirror: str, suite: str = SUITE
) -> dict[str, tuple[str, int]]:
    """Files written into the golden rootfs: path -> (content, mode). Part of the cache key."""
    cgroup_rw_unit = """\
[Unit]
Description=Harness: make cgroup v1 controllers writable (Docker inside systemd-nspawn)
DefaultDependencies=no
ConditionVirtualization=systemd-nspawn
ConditionPathExists=/etc/harness/cgroup-rw
Before=sysinit.target containerd.service docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
# nspawn mounts them read-only; plain "remount,rw" fails with "mount point is busy".
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*; do \
[ "$(stat -fc %%T $c)" = cgroupfs ] && mount -o remount,bind,rw $c; done; true'

[Install]
WantedBy=sysinit.target
"""
    return {
        "/etc/sudoers.d/deploy": ("deploy ALL=(ALL) NOPASSWD:ALL\n", 0o440),
        # host keys are per host: generated at first boot, never baked into the base
        "/etc/systemd/system/ssh.service.d/hostkeys.conf": (
            "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
            "ExecStartPre=/usr/sbin/sshd -t\n",
            0o644,
        ),
        "/etc/ssh/sshd_config.d/10-harness.conf": (
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUseDNS no\n",
            0o644,
        ),
        "/etc/apt/sources.list": (
            f"deb {mirror} {suite} main\n"
            f"deb {mirror} {suite}-updates main\n"
            f"deb {security_mirror} {suite}-security main\n",
            0o644,
        ),
        "/etc/systemd/system/harness-cgroup-rw.service": (cgroup_rw_unit, 0o644),
    }


def air_gap_rules(address: str, subnet: str, gateway: str) -> list[tuple[str, list[str]]]:
    """(chain, rule) that cut a host off from everything but the sandbox, in match order.

    Forwarded traffic to outside the subnet is rejected (TCP with a reset, the rest with
    net-unreachable, so clients fail at once instead of timing out); traffic to the
    controller itself is allowed on the bridge address only, where the stand-ins listen.
    """
    outside = ["-s", address, "!", "-d", subnet]
    not_gateway = ["-s", address, "!", "-d", gateway]
    tcp_reset = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]
    unreachable = ["-j", "REJECT", "--reject-with", "icmp-net-unreachable"]
    return [
        ("FORWARD", [*outside, *tcp_reset]),
        ("FORWARD", [*outside, *unreachable]),
        ("INPUT", [*not_gateway, *tcp_reset]),
        ("INPUT", [*not_gateway, *unreachable]),
    ]


def cache_key(
    packages: Sequence[str] = BASE_PACKAGES,
    prep_files: dict[str, tuple[str, int]] | None = None,
    week: str | None = None,
    prep_version: int = PREP_VERSION,
    suite: str = SUITE,
) -> str:
    """Content key of the golden rootfs: packages + prep + ISO week (picks up security fixes)."""
    files = prep_files if prep_files is not None else base_prep_files(*read_mirrors(), suite)
    doc = {
        "suite": suite,
        "packages": sorted(packages),
        "prep_version": prep_version,
        "prep_files": {k: [v[0], v[1]] for k, v in sorted(files.items())},
        "week": week or iso_week(),
    }
    blob = json.dumps(doc, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def render_inventory(
    hosts: Sequence[SandboxHost],
    host_data: dict[str, dict[str, object]],
    group_data: dict[str, object],
    group: str = "gpu_servers",
    generator: str = "python -m autoglm_testbed.hosts",
) -> str:
    """Text of a pyinfra Python inventory: `<group> = ([(name, data), ...], group_data)`."""
    if not group.isidentifier():
        raise ValueError(f"group name {group!r} is not a Python identifier")
    unknown = set(host_data) - {h.name for h in hosts}
    if unknown:
        raise ValueError(f"host_data for hosts not in the inventory: {sorted(unknown)}")
    entries: list[tuple[str, dict[str, object]]] = []
    for host in hosts:
        data: dict[str, object] = {
            "ssh_hostname": host.address,
            "ssh_port": host.ssh_port,
            "ssh_user": "root",
            "ssh_key": str(host.ssh_key),
            "ssh_known_hosts_file": str(host.known_hosts),
            # host keys are regenerated at every boot; `up` resets this file
            "ssh_strict_host_key_checking": "accept-new",
        }
        data.update(host_data.get(host.name, {}))
        entries.append((host.name, data))
    lines = [f"{group} = ("]
    lines.append("    [")
    for name, data in entries:
        lines.append(f"        ({name!r}, {{")
        lines += [f"            {k!r}: {v!r}," for k, v in data.items()]
        lines.append("        }),")
    lines.append("    ],")
    lines.append("    {")
    lines += [f"        {k!r}: {v!r}," for k, v in group_data.items()]
    lines.append("    },")
    lines.append(")")
    header = (
        f"# Generated by {generator} ({dt.datetime.now().isoformat(timespec='seconds')}).\n"
        "# Sandbox hosts are throw-away: do not edit, run `up` again to regenerate.\n"
    )
    return header + "\n".join(lines) + "\n"


def write_inventory(
    path: Path,
    hosts: list[SandboxHost],
    host_data: dict[str, dict[str, object]],
    group_data: dict[str, object],
    group: str = "gpu_servers",
) -> None:
    """Write a pyinfra inventory file for the sandbox hosts (atomically)."""
    _atomic_write(Path(path), render_inventory(hosts, host_data, group_data, group))


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\r", "", text)  # console colours
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(log is empty)"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# ----------------------------------------------------------------------------- system helpers


def _run(argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    # resolve through sbin too: `sudo` or cron may leave /usr/sbin off PATH
    resolved = [_which(argv[0]) or argv[0], *argv[1:]]
    result = subprocess.run(resolved, capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        raise SandboxError(
            f"`{shlex.join(argv)}` exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-1500:]}"
        )
    return result


def _which(tool: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "sandbox hosts need root (mounts, network namespaces, cgroups, iptables); "
            "re-run as root, e.g. `sudo -E .venv/bin/python -m autoglm_testbed.hosts ...`"
        )


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of a process, None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _alive(pid: int, starttime: int) -> bool:
    """True if *our* process is still running (same PID and start time, not a zombie)."""
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == starttime


def _mountpoints() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    return [p for p in _mountpoints() if p == str(root) or p.startswith(prefix)]


def _cgroup_hierarchies() -> list[tuple[Path, str]]:
    """(mountpoint, our path inside it) for every cgroup hierarchy this process is in."""
    mounts: list[tuple[str, set[str], str, str]] = []  # fstype, options, root, mountpoint
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        post_fields, pre_fields = post.split(), pre.split()
        if post_fields and post_fields[0] in ("cgroup", "cgroup2"):
            opts = set(post_fields[2].split(",")) if len(post_fields) > 2 else set()
            mounts.append((post_fields[0], opts, pre_fields[3], pre_fields[4]))
    # Read the whole file before moving anything: the content changes once we move.
    own = Path("/proc/self/cgroup").read_text().splitlines()
    result: list[tuple[Path, str]] = []
    for line in own:
        _, controllers, path = line.split(":", 2)
        wanted = set(controllers.split(",")) if controllers else set()
        for fstype, opts, mroot, mpoint in mounts:
            if (not wanted and fstype == "cgroup2") or (wanted and wanted <= opts):
                if path == mroot or path.startswith(mroot.rstrip("/") + "/") or mroot == "/":
                    rel = path[len(mroot) :] if mroot != "/" else path
                    result.append((Path(mpoint), rel.strip("/")))
                break
    return result


def _limit_cpu(cg: Path, percent: int, period_us: int = 100_000) -> None:
    """Cap a cgroup's CPU time (cgroup v1 cpu.cfs_*, or v2 cpu.max where enabled)."""
    quota_us = period_us * percent // 100
    if (cg / "cpu.cfs_quota_us").exists():
        (cg / "cpu.cfs_period_us").write_text(f"{period_us}\n")
        (cg / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    elif (cg / "cpu.max").exists():
        (cg / "cpu.max").write_text(f"{quota_us} {period_us}\n")


def _cgroup_procs(cg: Path) -> list[int]:
    pids: list[int] = []
    for dirpath, _dirs, files in os.walk(cg):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids += [int(x) for x in (Path(dirpath) / "cgroup.procs").read_text().split()]
    return pids


def _remove_cgroup(cg: Path, timeout: float = 30) -> None:
    """rmdir a cgroup subtree bottom-up (cgroupfs dirs only disappear with rmdir).

    Processes still in it were started by the host: they are killed again on each try,
    since on a loaded machine killed processes can take seconds to be reaped.
    """
    if not cg.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(cg, topdown=False):
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                left = _cgroup_procs(Path(dirpath))
                if time.monotonic() > deadline:
                    raise SandboxError(
                        f"cannot remove cgroup {dirpath} (processes left: {left})"
                    ) from None
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)


# ----------------------------------------------------------------------------- the sandbox


class Sandbox:
    """One named sandbox: a bridge on 10.231.<net>.0/24 plus any number of nspawn hosts."""

    def __init__(
        self,
        name: str,
        net: int,
        state_dir: Path,
        cache_dir: Path | None = None,
        cpu_quota_percent: int | None = None,
        suite: str = SUITE,
    ) -> None:
        if not _NAME_RE.match(name):
            raise SandboxError(
                f"sandbox name {name!r} must match {_NAME_RE.pattern} (interface names "
                "are limited to 15 characters)"
            )
        if not 1 <= net <= 254:
            raise SandboxError(f"net must be 1..254 (third octet of 10.231.<net>.0/24), got {net}")
        if cpu_quota_percent is not None and not 1 <= cpu_quota_percent <= 100 * (
            os.cpu_count() or 1
        ):
            raise SandboxError(
                f"cpu quota {cpu_quota_percent}% must be 1..{100 * (os.cpu_count() or 1)} "
                "(percent of one core per host)"
            )
        if suite not in DEBIAN_SUITES.values():
            raise SandboxError(f"suite {suite!r} is none of {sorted(DEBIAN_SUITES.values())}")
        self.name = name
        self.net = net
        self.suite = suite  # of the golden rootfs (the VM box may be Debian 13)
        # CPU time each host may use (percent of one core); None: unlimited. Starving the
        # hosts shows the waits that only hold on a quiet machine.
        self.cpu_quota_percent = cpu_quota_percent
        self.state_dir = Path(state_dir).absolute()
        if any(c in str(self.state_dir) for c in ",: \t\n"):
            raise SandboxError(f"state dir {self.state_dir} may not contain , : or whitespace")
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        self.bridge = f"ag-{name}-br"
        self.gateway = f"{SUBNET_PREFIX}.{net}.1"
        self.subnet = f"{SUBNET_PREFIX}.{net}.0/24"
        self.comment = f"autoglm-sandbox:{name}"
        self.base_dir = self.state_dir / "base"
        self.ssh_key = self.state_dir / "id_ed25519"
        self.known_hosts = self.state_dir / "known_hosts"
        self._state_file = self.state_dir / "sandbox.json"
        self._registry = REGISTRY_DIR / f"{name}.json"
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def exclusive(self, timeout: float = 900) -> Iterator[None]:
        """Hold the sandbox's lock (e.g. a whole pytest session): a second user of the same
        name waits instead of tearing down hosts the first one is using."""
        path = LOCK_DIR / f"autoglm-sandbox-{self.name}.lock"
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            deadline = time.monotonic() + timeout
            waiting_logged = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SandboxError(
                            f"sandbox {self.name} is still in use by another process after "
                            f"{timeout:g} s (lock {path})"
                        ) from None
                    if not waiting_logged:
                        log.warning("sandbox %s is in use by another process; waiting", self.name)
                        waiting_logged = True
                    time.sleep(1)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, net={self.net}, state_dir={str(self.state_dir)!r})"

    # -- tools and base image -------------------------------------------------------------

    def ensure_tools(self) -> None:
        """apt-get install the controller tools the harness needs, only if some are missing."""
        _require_root()
        missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not _which(tool)})
        if not missing:
            return
        log.info("installing controller tools: %s", " ".join(missing))
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        update = _run(["apt-get", "update", "-q"], check=False, env=env)
        install = _run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            check=False,
            env=env,
        )
        still = sorted(tool for tool in REQUIRED_TOOLS if not _which(tool))
        if still:
            raise SandboxError(
                f"missing tools {still} and `apt-get install {' '.join(missing)}` did not "
                f"provide them:\n{_indent((update.stderr + install.stderr).strip()[-2000:])}"
            )

    def base_cache_file(self, key: str | None = None) -> Path:
        return self.cache_dir / f"base-{self.suite}-{key or cache_key(suite=self.suite)}.tar.zst"

    def ensure_base(self) -> Path:
        """The golden rootfs under the state dir: kept, restored from the cache, or built."""
        _require_root()
        self._init_state_dir()
        mirror, security = read_mirrors()
        key = cache_key(prep_files=base_prep_files(mirror, security, self.suite), suite=self.suite)
        key_file = self.state_dir / "base.key"
        if (self.base_dir / "usr").is_dir():
            current = key_file.read_text().strip() if key_file.exists() else ""
            if current == key or self._load_state_records():
                return self.base_dir  # lower dir of running overlays must not change
            shutil.rmtree(self.base_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cache = self.base_cache_file(key)
        tmp = self.state_dir / "base.tmp"
        started = time.monotonic()
        # One builder per cache dir: a second sandbox waits and then restores the result.
        with _flock(self.cache_dir / ".lock"):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            if cache.is_file():
                self._restore_base(cache, tmp)
                log.info("base restored from %s in %.1f s", cache, time.monotonic() - started)
            else:
                self._build_base(tmp, mirror, security)
                built = time.monotonic()
                log.info("base built in %.1f s", built - started)
                self._write_cache(tmp, cache)
                log.info("base cached as %s in %.1f s", cache, time.monotonic() - built)
        os.replace(tmp, self.base_dir)
        key_file.write_text(key + "\n")
        return self.base_dir

    def _build_base(self, root: Path, mirror: str, security: str) -> None:
        self.ensure_tools()
        logfile = self.state_dir / "debootstrap.log"
        log.info("debootstrap %s from %s (about 60-90 s)", self.suite, mirror)
        with logfile.open("w") as out:
            argv = [
                _which("debootstrap") or "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
            ]
            rc = subprocess.run(
                [*argv, self.suite, str(root), mirror],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            ).returncode
        if rc != 0:
            raise SandboxError(
                f"debootstrap failed (rc {rc}); {logfile}:\n{_indent(_tail(logfile))}"
            )
        self._prep_base(root, mirror, security, self.suite)

    @staticmethod
    def _prep_base(root: Path, mirror: str, security: str, suite: str = SUITE) -> None:
        """Strip identity from the base and add the harness's config (see base_prep_files)."""
        for key in root.glob("etc/ssh/ssh_host_*"):
            key.unlink()
        for stale in ("etc/hostname", "var/lib/dbus/machine-id"):
            (root / stale).unlink(missing_ok=True)
        (root / "etc/machine-id").write_text("")  # empty: systemd makes one per boot
        _run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", "deploy"])
        for rel, (content, mode) in base_prep_files(mirror, security, suite).items():
            target = root / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            target.chmod(mode)
        wants = root / "etc/systemd/system/sysinit.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "harness-cgroup-rw.service").symlink_to(
            "/etc/systemd/system/harness-cgroup-rw.service"
        )
        _run(["chroot", str(root), "apt-get", "clean"])

    @staticmethod
    def _restore_base(cache: Path, root: Path) -> None:
        _pipe(["zstd", "-q", "-d", "-c", str(cache)], [*_TAR, "-C", str(root), "-xpf", "-"])

    @staticmethod
    def _write_cache(root: Path, cache: Path) -> None:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            _pipe(
                [*_TAR, "-C", str(root), "-cf", "-", "."],
                ["zstd", "-q", "-T0", "-3", "-f", "-o", str(tmp)],
            )
            os.replace(tmp, cache)
        finally:
            tmp.unlink(missing_ok=True)
        release = cache.name.rsplit("-", 1)[0]  # base-<suite>: the other release's stays
        for old in cache.parent.glob(f"{release}-*.tar.zst"):
            if old != cache:  # superseded by a newer week or prep; one base is enough
                old.unlink(missing_ok=True)

    # -- state ------------------------------------------------------------------------------

    def _init_state_dir(self) -> None:
        marker = self.state_dir / STATE_MARKER
        if self.state_dir.exists() and not marker.exists() and any(self.state_dir.iterdir()):
            raise SandboxError(
                f"state dir {self.state_dir} exists, is not empty and is not a sandbox state "
                "dir; pick another --state-dir"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{self.name}\n")
        if not self.ssh_key.exists():
            comment = f"autoglm-sandbox-{self.name}"
            keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
            _run([*keygen, "-C", comment, "-f", str(self.ssh_key)])

    def _load_state_records(self) -> list[_HostRecord]:
        try:
            doc = json.loads(self._state_file.read_text())
            return [_HostRecord(**h) for h in doc.get("hosts", [])]
        except (OSError, ValueError, TypeError):
            return []  # `down` still finds hosts through their netns, links and cgroups

    def _save_state(self, records: list[_HostRecord]) -> None:
        doc = {
            "name": self.name,
            "net": self.net,
            "bridge": self.bridge,
            "hosts": [asdict(r) for r in sorted(records, key=lambda r: r.index)],
        }
        _atomic_write(self._state_file, json.dumps(doc, indent=2) + "\n")

    def _host(self, rec: _HostRecord) -> SandboxHost:
        return SandboxHost(
            rec.name,
            rec.address,
            22,
            self.ssh_key,
            self.known_hosts,
            rec.docker,
            rec.air_gapped,
        )

    def hosts(self) -> list[SandboxHost]:
        """Hosts of this sandbox whose nspawn process is still running."""
        return [self._host(r) for r in self._load_state_records() if _alive(r.pid, r.starttime)]

    # -- network ----------------------------------------------------------------------------

    def check_net_free(self) -> None:
        """Fail early if another sandbox or interface owns 10.231.<net>.0/24."""
        for entry in REGISTRY_DIR.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                other = json.loads(entry.read_text())
                if other.get("name") != self.name and other.get("net") == self.net:
                    raise SandboxError(
                        f"net {self.net} is used by sandbox {other.get('name')!r} "
                        f"(state {other.get('state_dir')}); pick another --net"
                    )
        owner = _run(["ip", "-o", "-4", "addr", "show", "to", f"{self.gateway}/32"]).stdout.split()
        if owner and owner[1] != self.bridge:
            raise SandboxError(f"{self.gateway} is already assigned to interface {owner[1]}")

    def _ensure_network(self) -> None:
        self.check_net_free()
        _atomic_write(
            self._registry,
            json.dumps({"name": self.name, "net": self.net, "state_dir": str(self.state_dir)}),
        )
        if _run(["ip", "link", "show", self.bridge], check=False).returncode != 0:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        for table, chain, rule in self._iptables_rules():
            tagged = [*rule, "-m", "comment", "--comment", self.comment]
            exists = _run(["iptables", "-w", "-t", table, "-C", chain, *tagged], check=False)
            if exists.returncode != 0:
                # Insert first: the FORWARD policy may be DROP (any dockerd sets it).
                verb = ["-A", chain] if table == "nat" else ["-I", chain, "1"]
                _run(["iptables", "-w", "-t", table, *verb, *tagged])

    def _iptables_rules(self) -> list[tuple[str, str, list[str]]]:
        return [
            ("nat", "POSTROUTING", ["-s", self.subnet, "!", "-d", self.subnet, "-j", "MASQUERADE"]),
            ("filter", "FORWARD", ["-i", self.bridge, "-j", "ACCEPT"]),
            ("filter", "FORWARD", ["-o", self.bridge, "-j", "ACCEPT"]),
            ("filter", "INPUT", ["-i", self.bridge, "-j", "ACCEPT"]),
        ]

    def _host_comment(self, host_name: str) -> str:
        return f"{self.comment}:{host_name}"  # names hold no ":", so no prefix clashes

    def _tagged_iptables_rules(self, host_name: str | None = None) -> list[tuple[str, list[str]]]:
        """(table, rule words without -A) of our rules: the sandbox's and its hosts' (tagged
        "<comment>:<host>"), or only one host's."""
        if not _which("iptables"):
            return []
        found = []
        for table in ("nat", "filter"):
            listing = _run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
            for line in listing.splitlines():
                words = shlex.split(line)
                if words[:1] != ["-A"] or "--comment" not in words:
                    continue
                tag = words[words.index("--comment") + 1]
                if host_name is not None:
                    ours = tag == self._host_comment(host_name)
                else:
                    ours = tag == self.comment or tag.startswith(f"{self.comment}:")
                if ours:
                    found.append((table, words[1:]))
        return found

    def _remove_iptables_rules(self, host_name: str | None = None) -> None:
        """Delete our tagged rules (or one host's), also those a crashed run left behind."""
        for table, words in self._tagged_iptables_rules(host_name):
            _run(["iptables", "-w", "-t", table, "-D", *words], check=False)

    def _air_gap(self, rec: _HostRecord) -> None:
        """Insert the host's REJECT rules ahead of the bridge's ACCEPT rules."""
        tag = ["-m", "comment", "--comment", self._host_comment(rec.name)]
        # inserting each at position 1 in reverse keeps them in match order
        for chain, rule in reversed(air_gap_rules(rec.address, self.subnet, self.gateway)):
            _run(["iptables", "-w", "-t", "filter", "-I", chain, "1", *rule, *tag])

    def _net_up_host(self, rec: _HostRecord) -> None:
        ns = rec.netns
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", rec.veth, "type", "veth", "peer", "name", "host0", "netns", ns])
        _run(["ip", "link", "set", rec.veth, "master", self.bridge, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{rec.address}/24", "dev", "host0"])
        _run(["ip", "-n", ns, "link", "set", "host0", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", self.gateway])

    # -- hosts ------------------------------------------------------------------------------

    def up(self, specs: list[HostSpec], timeout: float = BOOT_TIMEOUT) -> list[SandboxHost]:
        """Boot hosts (in parallel) and return them once systemd reports running/degraded.

        Adds to the hosts already running in this sandbox. If any host fails, the hosts of
        this call are removed again and SandboxError names the host and shows its log tail.
        """
        _require_root()
        self.check_net_free()
        self.ensure_tools()
        self.ensure_base()
        started = time.monotonic()
        records = self._load_state_records()
        names = {r.name for r in records}
        next_index = max((r.index for r in records), default=0) + 1
        new: list[_HostRecord] = []
        for offset, spec in enumerate(specs):
            index = next_index + offset
            if index > MAX_HOSTS:
                raise SandboxError(f"a sandbox holds at most {MAX_HOSTS} hosts")
            name = spec.name or f"{self.name}-{index}"
            if not name.startswith(f"{self.name}-") or not _HOSTNAME_RE.match(name):
                raise SandboxError(f"host name {name!r} must be a hostname starting {self.name}-")
            if name in names:
                raise SandboxError(f"host {name} already exists in sandbox {self.name}")
            names.add(name)
            ident = f"ag-{self.name}-{index}"
            new.append(
                _HostRecord(
                    index=index,
                    name=name,
                    address=f"{SUBNET_PREFIX}.{self.net}.{HOST_OFFSET + index}",
                    docker=spec.docker,
                    air_gapped=spec.air_gapped,
                    netns=ident,
                    veth=ident,
                    dir=str(self.state_dir / "hosts" / name),
                )
            )
        if not new:
            return []
        self._ensure_network()
        self._reset_known_hosts([r.address for r in new])
        try:
            for rec in new:
                records.append(rec)
                self._save_state(records)  # before anything exists, so `down` finds it
                self._prepare_host(rec)
                self._launch(rec)
                self._save_state(records)
            with ThreadPoolExecutor(max_workers=len(new)) as pool:
                list(pool.map(lambda r: self._wait_ready(r, timeout), new))
        except BaseException:
            self._remove_records(new)
            raise
        log.info("%d host(s) up in %.1f s", len(new), time.monotonic() - started)
        return [self._host(r) for r in new]

    def _reset_known_hosts(self, addresses: list[str]) -> None:
        """Drop stale entries: every boot generates new host keys."""
        drop = set(addresses) | {f"[{a}]:22" for a in addresses}
        try:
            lines = self.known_hosts.read_text().splitlines()
        except OSError:
            lines = []
        keep = [ln for ln in lines if not (ln.split() and set(ln.split()[0].split(",")) & drop)]
        _atomic_write(self.known_hosts, "".join(f"{ln}\n" for ln in keep), 0o600)

    def _prepare_host(self, rec: _HostRecord) -> None:
        hdir = Path(rec.dir)
        if hdir.exists():
            shutil.rmtree(hdir)
        for sub in ("upper", "work", "root"):
            (hdir / sub).mkdir(parents=True)
        root = hdir / "root"
        layers = f"lowerdir={self.base_dir},upperdir={hdir / 'upper'},workdir={hdir / 'work'}"
        _run(["mount", "-t", "overlay", rec.veth, "-o", layers, str(root)])
        (root / "etc/hostname").write_text(f"{rec.name}\n")
        (root / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{rec.name}\n{rec.address}\t{rec.name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        pubkey = (self.ssh_key.with_suffix(".pub")).read_text()
        uid, gid = _passwd_ids(root, "deploy")
        for home, owner in ((root / "root", (0, 0)), (root / "home/deploy", (uid, gid))):
            ssh_dir = home / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            keys = ssh_dir / "authorized_keys"
            keys.write_text(pubkey)
            keys.chmod(0o600)
            for p in (ssh_dir, keys):
                os.chown(p, *owner)
        if rec.docker:
            (hdir / "docker").mkdir()
            (root / "etc/harness").mkdir(exist_ok=True)
            (root / "etc/harness/cgroup-rw").write_text("")
        self._net_up_host(rec)
        if rec.air_gapped:
            self._air_gap(rec)  # before boot: the host never has a route out
        rec.cgroups = [str(p) for p in self._make_cgroups(f"ag-{self.name}-{rec.index}")]

    def _make_cgroups(self, leaf: str) -> list[Path]:
        """A child cgroup in every hierarchy: with --keep-unit and no host systemd, nspawn
        puts payload/ and supervisor/ under its current cgroup, so hosts would share one."""
        made: list[Path] = []
        for mount, rel in _cgroup_hierarchies():
            parent = mount / rel
            cg = parent / leaf
            cg.mkdir(exist_ok=True)
            if (parent / "cpuset.cpus").exists():  # v1 cpuset children start empty
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (cg / f).write_text((parent / f).read_text())
            if self.cpu_quota_percent is not None:
                _limit_cpu(cg, self.cpu_quota_percent)
            made.append(cg)
        return made

    def _nspawn_argv(self, rec: _HostRecord) -> list[str]:
        hdir = Path(rec.dir)
        argv = [
            _which("systemd-nspawn") or "systemd-nspawn",
            "--quiet",
            "--register=no",  # no machined/D-Bus on the controller
            "--keep-unit",  # without it nspawn wants the system bus and exits
            # read-only, not passive: the boot log lands in nspawn.log for error messages
            "--console=read-only",
            "--link-journal=no",
            f"--machine={rec.name}",
            f"--directory={hdir / 'root'}",
            f"--network-namespace-path=/run/netns/{rec.netns}",
            "--capability=CAP_NET_ADMIN",  # not granted with a netns path; only its own netns
        ]
        if rec.docker:
            argv += [
                "--system-call-filter=@keyring",  # runc's session keyring
                f"--bind={hdir / 'docker'}:/var/lib/docker",  # overlay2 needs a non-overlay fs
            ]
        return [*argv, "--boot"]

    def _launch(self, rec: _HostRecord) -> None:
        hdir = Path(rec.dir)
        # A tiny sh joins the cgroups and execs nspawn, so nspawn starts inside them and
        # keeps the PID Popen reports (no preexec_fn: unsafe with threads).
        join_then_exec = (
            'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done; '
            'shift; exec "$@"'
        )
        env = {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}
        with (hdir / "nspawn.log").open("wb") as logf:
            launcher = ["/bin/sh", "-c", join_then_exec, "sh", *rec.cgroups, "--"]
            proc = subprocess.Popen(
                [*launcher, *self._nspawn_argv(rec)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # hosts outlive the CLI and ignore its Ctrl-C
            )
        stat = _proc_stat(proc.pid)
        rec.pid, rec.starttime = proc.pid, stat[1] if stat else 0
        with self._lock:
            self._procs[proc.pid] = proc

    def _exited(self, rec: _HostRecord) -> bool:
        proc = self._procs.get(rec.pid)
        if proc is not None and proc.poll() is not None:
            return True
        return not _alive(rec.pid, rec.starttime)

    def _wait_ready(self, rec: _HostRecord, timeout: float) -> None:
        host = self._host(rec)
        argv = host.ssh_argv("systemctl is-system-running", probe=True)
        deadline = time.monotonic() + timeout
        last = ""
        logfile = Path(rec.dir) / "nspawn.log"
        while time.monotonic() < deadline:
            if self._exited(rec):
                raise SandboxError(
                    f"{rec.name}: systemd-nspawn exited early; {logfile}:\n"
                    f"{_indent(_tail(logfile))}"
                )
            try:
                result = subprocess.run(
                    argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
                )
                state = result.stdout.strip()
                last = state or result.stderr.strip()
            except subprocess.TimeoutExpired:
                state, last = "", "ssh timed out"
            if state in ("running", "degraded"):
                if state == "degraded":
                    log.warning("%s booted degraded (some unit failed)", rec.name)
                return
            time.sleep(0.25)
        raise SandboxError(
            f"{rec.name} ({rec.address}): not ready over SSH after {timeout:g} s "
            f"(last answer: {last!r}); {logfile}:\n{_indent(_tail(logfile))}"
        )

    def remove(self, hosts: Sequence[SandboxHost]) -> None:
        """Power off and delete some hosts of this sandbox (network and base stay)."""
        wanted = {h.name for h in hosts}
        self._remove_records([r for r in self._load_state_records() if r.name in wanted])

    def _remove_records(self, targets: list[_HostRecord]) -> None:
        if not targets:
            return
        if len(targets) == 1:
            self._teardown_host(targets[0])
        else:
            with ThreadPoolExecutor(max_workers=len(targets)) as pool:
                list(pool.map(self._teardown_host, targets))
        gone = {r.name for r in targets}
        self._save_state([r for r in self._load_state_records() if r.name not in gone])

    def _stop(self, rec: _HostRecord) -> None:
        """SIGTERM to nspawn (-> SIGRTMIN+3 -> clean poweroff); SIGKILL as a last resort."""
        if not _alive(rec.pid, rec.starttime):
            # State lost in a crash: nspawn is the process in the host's own cgroup
            for pid in {p for cg in rec.cgroups for p in _cgroup_procs(Path(cg))}:
                stat = _proc_stat(pid)
                with contextlib.suppress(OSError):
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    if stat and comm == "systemd-nspawn":
                        rec.pid, rec.starttime = pid, stat[1]
                        break
        if _alive(rec.pid, rec.starttime):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline and not self._exited(rec):
                time.sleep(0.05)
            if _alive(rec.pid, rec.starttime):
                log.warning("%s did not power off in %.0f s; SIGKILL", rec.name, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)
        proc = self._procs.pop(rec.pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # Whatever is still in the host's own cgroups was started by it: kill by PID.
        for _ in range(50):
            pids = {p for cg in rec.cgroups for p in _cgroup_procs(Path(cg))}
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _teardown_host(self, rec: _HostRecord) -> None:
        self._stop(rec)
        hdir = Path(rec.dir)
        for point in sorted(_mounts_under(hdir), key=len, reverse=True):
            _run(["umount", point], check=False)
        if rec.netns in _netns_names():
            _run(["ip", "netns", "del", rec.netns], check=False)
        if Path(f"/sys/class/net/{rec.veth}").exists():
            _run(["ip", "link", "del", rec.veth], check=False)
        self._remove_iptables_rules(rec.name)
        for cg in rec.cgroups:
            _remove_cgroup(Path(cg))
        # nspawn refuses to rm -rf this because /run is not a tmpfs here
        propagate = NSPAWN_PROPAGATE_DIR / rec.name
        if propagate.is_dir() and not _mounts_under(propagate):
            shutil.rmtree(propagate, ignore_errors=True)
        if hdir.exists() and not _mounts_under(hdir):
            shutil.rmtree(hdir)

    def _discover_leftovers(self) -> list[_HostRecord]:
        """Hosts of this sandbox that a crashed run may have left without a state entry."""
        pattern = re.compile(rf"^ag-{self.name}-(\d+)$")
        found: dict[int, _HostRecord] = {}

        def rec_for(index: int) -> _HostRecord:
            ident = f"ag-{self.name}-{index}"
            return found.setdefault(
                index,
                _HostRecord(
                    index=index,
                    name=f"{self.name}-{index}",
                    address="",
                    docker=False,
                    netns=ident,
                    veth=ident,
                    dir=str(self.state_dir / "hosts" / f"{self.name}-{index}"),
                ),
            )

        for ns in _netns_names():
            if m := pattern.match(ns):
                rec_for(int(m.group(1)))
        for link in Path("/sys/class/net").iterdir():
            if m := pattern.match(link.name):
                rec_for(int(m.group(1)))
        for mount, _rel in _cgroup_hierarchies():
            for dirpath, dirs, _files in os.walk(mount):
                for d in list(dirs):
                    if m := pattern.match(d):
                        rec_for(int(m.group(1))).cgroups.append(os.path.join(dirpath, d))
                        dirs.remove(d)  # our host's subtree: do not descend
        return list(found.values())

    def down(self) -> None:
        """Remove everything this sandbox created; safe to call when nothing is up."""
        _require_root()
        records = self._load_state_records()
        known = {r.index: r for r in records}
        for extra in self._discover_leftovers():
            rec = known.get(extra.index)
            if rec is None:
                records.append(extra)
            else:
                rec.cgroups = sorted(set(rec.cgroups) | set(extra.cgroups))
        started = time.monotonic()
        if records:
            with ThreadPoolExecutor(max_workers=len(records)) as pool:
                list(pool.map(self._teardown_host, records))
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run(["ip", "link", "del", self.bridge], check=False)
        self._remove_iptables_rules()
        for point in sorted(_mounts_under(self.state_dir), key=len, reverse=True):
            _run(["umount", point], check=False)  # e.g. hosts with custom names, state lost
        leftover_mounts = _mounts_under(self.state_dir)
        if leftover_mounts:
            raise SandboxError(f"still mounted, state dir kept: {leftover_mounts}")
        if (self.state_dir / STATE_MARKER).exists():
            shutil.rmtree(self.state_dir)
        elif self.state_dir.exists() and not any(self.state_dir.iterdir()):
            self.state_dir.rmdir()
        self._registry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            REGISTRY_DIR.rmdir()  # only if empty
        left = {kind: items for kind, items in self.leftovers().items() if items}
        if left:
            raise SandboxError(f"down of sandbox {self.name} left {left}")
        if records:
            log.info(
                "sandbox %s down (%d hosts) in %.1f s",
                self.name,
                len(records),
                time.monotonic() - started,
            )

    def leftovers(self) -> dict[str, list[str]]:
        """Everything of this sandbox that exists on the controller now (all empty after down)."""
        ours = re.compile(rf"^ag-{self.name}-(\d+|br)$")
        cgroups = [
            cg for rec in self._discover_leftovers() for cg in rec.cgroups if Path(cg).exists()
        ]
        pids = {r.pid for r in self._load_state_records() if _alive(r.pid, r.starttime)}
        pids |= {p for cg in cgroups for p in _cgroup_procs(Path(cg))}
        return {
            "processes": [str(p) for p in sorted(pids)],
            "mounts": _mounts_under(self.state_dir),
            "netns": [ns for ns in _netns_names() if ours.match(ns)],
            "links": sorted(p.name for p in Path("/sys/class/net").iterdir() if ours.match(p.name)),
            "cgroups": sorted(cgroups),
            "iptables": [f"-t {t} -A {shlex.join(w)}" for t, w in self._tagged_iptables_rules()],
            "files": [str(p) for p in (self.state_dir, self._registry) if p.exists()],
        }


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise SandboxError(f"user {user} missing from the base image")


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pipe(producer: list[str], consumer: list[str]) -> None:
    """producer | consumer without a shell; raise with both stderrs on failure."""
    with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2:
        p1 = subprocess.Popen(producer, stdout=subprocess.PIPE, stderr=err1)
        p2 = subprocess.Popen(consumer, stdin=p1.stdout, stderr=err2)
        assert p1.stdout is not None
        p1.stdout.close()  # p2 owns the read end now; p1 gets SIGPIPE if p2 dies
        rc2, rc1 = p2.wait(), p1.wait()
        if rc1 or rc2:
            raise SandboxError(
                f"`{shlex.join(producer)} | {shlex.join(consumer)}` failed ({rc1}/{rc2}): "
                f"{_read(err1)} {_read(err2)}"
            )


def _read(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read().decode(errors="replace").strip()[-1000:]


# ----------------------------------------------------------------------------- CLI


def _registered() -> list[dict[str, Any]]:
    found = []
    for entry in sorted(REGISTRY_DIR.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(entry.read_text()))
    return found


def _sandbox_from_args(name: str, net: int | None, state_dir: str | None) -> Sandbox:
    reg = next((r for r in _registered() if r.get("name") == name), None)
    if state_dir is None:
        state_dir = reg["state_dir"] if reg else f".sandbox/{name}"
    if net is None:
        net = int(reg["net"]) if reg else 1
    return Sandbox(name, net, Path(state_dir))


def _cmd_up(args: argparse.Namespace) -> int:
    sb = Sandbox(args.name, args.net, Path(args.state_dir or f".sandbox/{args.name}"))
    _require_root()
    with sb.exclusive(timeout=60):
        return _up_locked(sb, args)


def _up_locked(sb: Sandbox, args: argparse.Namespace) -> int:
    running = sb.hosts()
    if running:
        raise SandboxError(
            f"sandbox {sb.name} is already up ({', '.join(h.name for h in running)}); "
            f"run `python -m autoglm_testbed.hosts down --name {sb.name}` first"
        )
    t0 = time.monotonic()
    sb.ensure_tools()
    if any(sb.leftovers().values()):
        sb.down()  # a crashed or interrupted earlier run
    sb.check_net_free()
    t1 = time.monotonic()
    sb.ensure_base()
    t2 = time.monotonic()
    specs = [HostSpec() for _ in range(args.hosts)]
    specs += [HostSpec(docker=True) for _ in range(args.docker_hosts)]
    try:
        hosts = sb.up(specs)
    except BaseException:
        sb.down()  # leave nothing half-made behind; the error carries the log tail
        raise
    t3 = time.monotonic()
    if args.inventory:
        write_inventory(Path(args.inventory), hosts, {}, {}, group=args.group)
    for h in hosts:
        print(f"{h.name}\t{h.address}\t{'docker' if h.docker else 'plain'}")
    print(
        f"timings: tools {t1 - t0:.1f} s, base {t2 - t1:.1f} s, boot {t3 - t2:.1f} s",
        file=sys.stderr,
    )
    if args.inventory:
        print(
            f"inventory: {args.inventory}  (try: pyinfra {args.inventory} exec -y -- hostname)",
            file=sys.stderr,
        )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    sb = _sandbox_from_args(args.name, None, args.state_dir)
    _require_root()
    with sb.exclusive(timeout=60):
        sb.down()
    print(f"sandbox {args.name} down in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    entries = _registered()
    if not entries:
        print("no sandboxes registered")
    for reg in entries:
        sb = Sandbox(reg["name"], int(reg["net"]), Path(reg["state_dir"]))
        records = sb._load_state_records()
        print(f"sandbox {sb.name}: net {sb.subnet}, bridge {sb.bridge}, state {sb.state_dir}")
        for r in records:
            state = "running" if _alive(r.pid, r.starttime) else "stopped"
            kind = ("docker" if r.docker else "plain") + (",air-gapped" if r.air_gapped else "")
            print(f"  {r.name}\t{r.address}\t{kind}\t{state}\tpid {r.pid}")
    return 0


def _cmd_ssh(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    for reg in _registered():
        sb = Sandbox(reg["name"], int(reg["net"]), Path(reg["state_dir"]))
        for host in sb.hosts():
            if host.name == args.host:
                argv = host.ssh_argv(" ".join(command) if command else None)  # as ssh joins
                if not command:
                    argv.insert(1, "-t")
                return subprocess.run(argv).returncode
    raise SandboxError(f"no running sandbox host named {args.host} (see `status`)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoglm_testbed.hosts",
        description="Throw-away Debian 12 hosts (systemd-nspawn + SSH) for integration tests.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="boot a sandbox (fails if it is already up)")
    p_up.add_argument("--name", default="demo", help="sandbox name, [a-z][a-z0-9]{0,7}")
    p_up.add_argument("--net", type=int, default=1, help="third octet: 10.231.<net>.0/24")
    p_up.add_argument("--hosts", type=int, default=2, help="plain hosts")
    p_up.add_argument(
        "--docker-hosts", type=int, default=0, help="additional hosts prepared for Docker inside"
    )
    p_up.add_argument("--state-dir", help="default .sandbox/<name>")
    p_up.add_argument("--inventory", help="write a pyinfra inventory here")
    p_up.add_argument("--group", default="gpu_servers", help="inventory group name")
    p_up.set_defaults(func=_cmd_up)
    p_down = sub.add_parser("down", help="remove everything a sandbox created")
    p_down.add_argument("--name", default="demo")
    p_down.add_argument("--state-dir", help="default: as registered by up, else .sandbox/<name>")
    p_down.set_defaults(func=_cmd_down)
    p_status = sub.add_parser("status", help="list sandboxes and their hosts")
    p_status.set_defaults(func=_cmd_status)
    p_ssh = sub.add_parser("ssh", help="ssh HOST -- COMMAND (interactive without a command)")
    p_ssh.add_argument("host")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    p_ssh.set_defaults(func=_cmd_ssh)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.func(args))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run `down` to remove what was started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
