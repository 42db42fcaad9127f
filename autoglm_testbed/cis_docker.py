"""CIS Docker Benchmark section 5 ("Container Runtime") for one container. Pure.

docker-bench-security is a shell script from GitHub only (not in apt, PyPI or CI), so
this module re-implements the per-container checks of its tests/5_container_runtime.sh
over `docker inspect` JSON (and `docker info` JSON for the daemon-level 5.1). Its logic
was read from docker/docker-bench-security at commit
98acc66436c9ff7c14bcb72c11a6414a1dba21d6 (the CIS 1.2-1.5 layout that tags up to v1.6.0
use), with the changes master ff26d67 made that shared/reference/hardening.md section
1.1 records: IDs +1 (swarm mode moved from 7.1 to 5.1 in commit 958f5fa, v1.6.1),
CPU priority passes on `--cpus` (NanoCpus), restart policy warns only above 5 retries,
no-new-privileges also passes when the daemon sets it. Each finding carries both IDs.

Deliberate differences, all stricter or equally strict: a port published on "" or "::"
counts as a wildcard like "0.0.0.0" (the script only parses "0.0.0.0"), and
`no-new-privileges:false` does not pass 5.26 (the script greps the option's name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Result = Literal["PASS", "WARN", "INFO", "NOTE"]
Doc = Mapping[str, Any]

# Docker's default capability set: adding one of these back is not a finding (5.4).
DEFAULT_CAPS = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
SENSITIVE_DIRS = ("/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr")
WILDCARD_IPS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Finding:
    id: str  # docker-bench v1.6.1+ / master numbering (what docker_args.py cites)
    old_id: str  # docker-bench <= v1.6.0 (CIS 1.2-1.5) numbering; "7.1" for swarm mode
    title: str
    result: Result
    evidence: str


@dataclass(frozen=True)
class Context:
    """What the checks read: the container, and what `docker inspect` alone lacks."""

    container: Doc
    info: Doc | None = None  # `docker info --format '{{json .}}'`; None: not read
    processes: Sequence[str] | None = None  # `docker top` command lines; None: not read
    daemon_no_new_privileges: bool = False  # daemon.json "no-new-privileges": true

    @property
    def host_config(self) -> Doc:
        return _map(self.container.get("HostConfig"))

    @property
    def security_opt(self) -> list[str]:
        return [str(o) for o in self.host_config.get("SecurityOpt") or []]

    @property
    def mounts(self) -> list[Doc]:
        return [_map(m) for m in self.container.get("Mounts") or []]

    def host_bindings(self) -> list[tuple[str, str]]:
        """(HostIp, HostPort) of every published port, as `docker port` lists them."""
        ports = _map(self.container.get("NetworkSettings")).get("Ports")
        if not ports:  # not running: what was asked for
            ports = self.host_config.get("PortBindings")
        found = []
        for entries in _map(ports).values():
            for entry in entries or []:
                e = _map(entry)
                found.append((str(e.get("HostIp", "")), str(e.get("HostPort", ""))))
        return found


def _map(value: object) -> Doc:
    return value if isinstance(value, Mapping) else {}


Check = Callable[[Context], tuple[Result, str]]


def _warn_if(bad: bool, bad_text: str, good_text: str) -> tuple[Result, str]:
    return ("WARN", bad_text) if bad else ("PASS", good_text)


def _host_mode(field: str) -> Check:
    def check(ctx: Context) -> tuple[Result, str]:
        mode = str(ctx.host_config.get(field) or "")
        return _warn_if(mode == "host", f"{field}=host", f"{field}={mode or 'default'}")

    return check


def swarm_mode(ctx: Context) -> tuple[Result, str]:
    if ctx.info is None:
        return "INFO", "docker info not read"
    state = str(_map(ctx.info.get("Swarm")).get("LocalNodeState", ""))
    return _warn_if(state != "inactive", f"swarm {state or 'unknown'}", "swarm inactive")


def apparmor(ctx: Context) -> tuple[Result, str]:
    profile = str(ctx.container.get("AppArmorProfile") or "")
    return _warn_if(
        profile in ("", "[]", "unconfined"),
        f"AppArmorProfile={profile or 'none'}",
        f"AppArmorProfile={profile}",
    )


def selinux_options(ctx: Context) -> tuple[Result, str]:
    # As upstream: any security option passes (it cannot tell SELinux labels apart).
    opts = ctx.security_opt
    return _warn_if(not opts, "no SecurityOpt", f"SecurityOpt={opts}")


def capabilities(ctx: Context) -> tuple[Result, str]:
    added = [str(c).upper().removeprefix("CAP_") for c in ctx.host_config.get("CapAdd") or []]
    extra = sorted(set(added) - DEFAULT_CAPS)
    drop = ctx.host_config.get("CapDrop") or []
    return _warn_if(bool(extra), f"CapAdd beyond the defaults: {extra}", f"CapDrop={drop}")


def privileged(ctx: Context) -> tuple[Result, str]:
    on = ctx.host_config.get("Privileged") is True
    return _warn_if(on, "Privileged=true", "Privileged=false")


def sensitive_mounts(ctx: Context) -> tuple[Result, str]:
    # Upstream matches the directory on either side of a read-write mount.
    hits = sorted(
        {
            d
            for m in ctx.mounts
            if m.get("RW") is True
            for d in (m.get("Source"), m.get("Destination"))
            if d in SENSITIVE_DIRS
        }
    )
    return _warn_if(bool(hits), f"read-write mounts of {hits}", "no sensitive directory rw")


def sshd(ctx: Context) -> tuple[Result, str]:
    if ctx.processes is None:
        return "INFO", "processes not read"
    hits = [p for p in ctx.processes if "sshd" in p]
    return _warn_if(bool(hits), f"sshd running: {hits[0] if hits else ''}", "no sshd")


def privileged_ports(ctx: Context) -> tuple[Result, str]:
    low = sorted({p for _, p in ctx.host_bindings() if p.isdigit() and int(p) < 1024})
    return _warn_if(bool(low), f"host ports below 1024: {low}", "no host port below 1024")


def needed_ports(ctx: Context) -> tuple[Result, str]:
    shown = [f"{ip or '*'}:{port}" for ip, port in ctx.host_bindings()]
    return "NOTE", f"published: {shown or 'none'} (review by hand)"


def memory_limit(ctx: Context) -> tuple[Result, str]:
    memory = int(ctx.host_config.get("Memory") or 0)
    return _warn_if(memory == 0, "Memory=0 (unlimited)", f"Memory={memory}")


def cpu_priority(ctx: Context) -> tuple[Result, str]:
    shares = int(ctx.host_config.get("CpuShares") or 0)
    nano = int(ctx.host_config.get("NanoCpus") or 0)
    return _warn_if(
        shares == 0 and nano == 0,
        "CpuShares=0 and NanoCpus=0 (no CPU limit)",
        f"CpuShares={shares}, NanoCpus={nano}",
    )


def read_only_rootfs(ctx: Context) -> tuple[Result, str]:
    ro = ctx.host_config.get("ReadonlyRootfs") is True
    return _warn_if(not ro, "ReadonlyRootfs=false", "ReadonlyRootfs=true")


def host_interface(ctx: Context) -> tuple[Result, str]:
    wild = sorted({f"{ip or '*'}:{p}" for ip, p in ctx.host_bindings() if ip in WILDCARD_IPS})
    shown = sorted({f"{ip}:{p}" for ip, p in ctx.host_bindings()})
    return _warn_if(bool(wild), f"published on every interface: {wild}", f"published: {shown}")


def restart_policy(ctx: Context) -> tuple[Result, str]:
    policy = _map(ctx.host_config.get("RestartPolicy"))
    name = str(policy.get("Name") or "no")
    retries = int(policy.get("MaximumRetryCount") or 0)
    return _warn_if(
        retries > 5, f"{name}, MaximumRetryCount={retries} > 5", f"{name}, retries {retries}"
    )


def devices(ctx: Context) -> tuple[Result, str]:
    found = [_map(d).get("PathOnHost") for d in ctx.host_config.get("Devices") or []]
    requests = len(ctx.host_config.get("DeviceRequests") or [])
    if found:
        return "INFO", f"host devices passed directly: {found}"
    return "PASS", f"no Devices ({requests} DeviceRequests, e.g. --gpus)"


def ulimits(ctx: Context) -> tuple[Result, str]:
    limits = ctx.host_config.get("Ulimits") or []
    if not limits:
        return "INFO", "default ulimits (not overridden)"
    return "PASS", f"Ulimits={[_map(u).get('Name') for u in limits]}"


def mount_propagation(ctx: Context) -> tuple[Result, str]:
    shared = [m.get("Destination") for m in ctx.mounts if "shared" in str(m.get("Propagation"))]
    return _warn_if(bool(shared), f"shared propagation on {shared}", "no shared propagation")


def seccomp(ctx: Context) -> tuple[Result, str]:
    off = any(o in ("seccomp:unconfined", "seccomp=unconfined") for o in ctx.security_opt)
    return _warn_if(off, "seccomp=unconfined", "seccomp profile in force")


def manual(text: str) -> Check:
    def check(_ctx: Context) -> tuple[Result, str]:
        return "NOTE", text

    return check


def cgroup_parent(ctx: Context) -> tuple[Result, str]:
    parent = str(ctx.host_config.get("CgroupParent") or "")
    return _warn_if(bool(parent), f"CgroupParent={parent}", "default cgroup parent")


def no_new_privileges(ctx: Context) -> tuple[Result, str]:
    opts = {o.replace("=", ":") for o in ctx.security_opt}
    if opts & {"no-new-privileges", "no-new-privileges:true"}:
        return "PASS", "SecurityOpt no-new-privileges:true"
    if ctx.daemon_no_new_privileges and "no-new-privileges:false" not in opts:
        return "PASS", "daemon no-new-privileges: true"
    return "WARN", "no-new-privileges not set"


def healthcheck_at_runtime(ctx: Context) -> tuple[Result, str]:
    health = _map(ctx.container.get("State")).get("Health")
    if not isinstance(health, Mapping):
        return "WARN", "no health check"
    return "PASS", f"health {health.get('Status')}"


def image_pinned(ctx: Context) -> tuple[Result, str]:
    image = str(_map(ctx.container.get("Config")).get("Image", ""))
    pinned = "@sha256:" in image or image.startswith("sha256:")
    return "INFO", f"image {image} ({'pinned by digest' if pinned else 'NOT pinned by digest'})"


def pids_limit(ctx: Context) -> tuple[Result, str]:
    limit = ctx.host_config.get("PidsLimit")
    return _warn_if(limit in (None, 0, -1), f"PidsLimit={limit}", f"PidsLimit={limit}")


def default_bridge(ctx: Context) -> tuple[Result, str]:
    networks = list(_map(_map(ctx.container.get("NetworkSettings")).get("Networks")))
    if "bridge" in networks:
        return "INFO", "on the default bridge docker0"
    return "PASS", f"networks {networks}"


def userns_host(ctx: Context) -> tuple[Result, str]:
    mode = str(ctx.host_config.get("UsernsMode") or "")
    return _warn_if("host" in mode.lower(), f"UsernsMode={mode}", f"UsernsMode={mode or 'default'}")


def docker_socket(ctx: Context) -> tuple[Result, str]:
    hits = [
        str(m.get("Source"))
        for m in ctx.mounts
        if "docker.sock" in f"{m.get('Source')} {m.get('Destination')}"
    ]
    return _warn_if(bool(hits), f"docker.sock mounted from {hits}", "docker.sock not mounted")


# (new ID, old ID, title, check). "Manual" checks only NOTE or INFO, as upstream does.
CHECKS: tuple[tuple[str, str, str, Check], ...] = (
    ("5.1", "7.1", "Swarm mode is not enabled, if not needed", swarm_mode),
    ("5.2", "5.1", "AppArmor profile is enabled, if applicable", apparmor),
    ("5.3", "5.2", "SELinux security options are set, if applicable", selinux_options),
    ("5.4", "5.3", "Linux kernel capabilities are restricted", capabilities),
    ("5.5", "5.4", "Privileged containers are not used", privileged),
    ("5.6", "5.5", "Sensitive host system directories are not mounted", sensitive_mounts),
    ("5.7", "5.6", "sshd is not run within containers", sshd),
    ("5.8", "5.7", "Privileged ports are not mapped", privileged_ports),
    ("5.9", "5.8", "Only needed ports are open (manual)", needed_ports),
    ("5.10", "5.9", "The host's network namespace is not shared", _host_mode("NetworkMode")),
    ("5.11", "5.10", "Memory usage is limited", memory_limit),
    ("5.12", "5.11", "CPU priority is set", cpu_priority),
    ("5.13", "5.12", "Root filesystem is mounted read-only", read_only_rootfs),
    ("5.14", "5.13", "Incoming traffic is bound to a host interface", host_interface),
    ("5.15", "5.14", "On-failure restart policy is at most 5", restart_policy),
    ("5.16", "5.15", "The host's process namespace is not shared", _host_mode("PidMode")),
    ("5.17", "5.16", "The host's IPC namespace is not shared", _host_mode("IpcMode")),
    ("5.18", "5.17", "Host devices are not directly exposed (manual)", devices),
    ("5.19", "5.18", "Default ulimit is overridden only if needed (manual)", ulimits),
    ("5.20", "5.19", "Mount propagation is not shared", mount_propagation),
    ("5.21", "5.20", "The host's UTS namespace is not shared", _host_mode("UTSMode")),
    ("5.22", "5.21", "The default seccomp profile is not disabled", seccomp),
    ("5.23", "5.22", "docker exec is not used with --privileged",
     manual("audit `docker exec --privileged` use in the daemon's events/audit log")),
    ("5.24", "5.23", "docker exec is not used with --user=root",
     manual("audit `docker exec --user=root` use in the daemon's events/audit log")),
    ("5.25", "5.24", "cgroup usage is confirmed", cgroup_parent),
    ("5.26", "5.25", "Container cannot acquire additional privileges", no_new_privileges),
    ("5.27", "5.26", "Container health is checked at runtime", healthcheck_at_runtime),
    ("5.28", "5.27", "Images are pinned / up to date (manual)", image_pinned),
    ("5.29", "5.28", "The PIDs cgroup limit is used", pids_limit),
    ("5.30", "5.29", "The default bridge docker0 is not used (manual)", default_bridge),
    ("5.31", "5.30", "The host's user namespace is not shared", userns_host),
    ("5.32", "5.31", "The Docker socket is not mounted", docker_socket),
)  # fmt: skip


def evaluate(
    container: Doc,
    info: Doc | None = None,
    processes: Sequence[str] | None = None,
    daemon_no_new_privileges: bool = False,
) -> list[Finding]:
    """Every section 5 check for one `docker inspect` document (one element of its list).

    Evidence never quotes Config.Env (it may hold the API key).
    """
    ctx = Context(container, info, processes, daemon_no_new_privileges)
    findings = []
    for new_id, old_id, title, check in CHECKS:
        result, evidence = check(ctx)
        findings.append(Finding(new_id, old_id, title, result, evidence))
    return findings


def warnings(findings: Sequence[Finding], exclude: Sequence[str] = ()) -> list[Finding]:
    """The WARN findings, except the (new) IDs in `exclude`."""
    return [f for f in findings if f.result == "WARN" and f.id not in exclude]


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding, like docker-bench prints them."""
    return "\n".join(f"[{f.result}] {f.id:<5} {f.title}: {f.evidence}" for f in findings)
