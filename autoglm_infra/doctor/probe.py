"""What the doctor reads from a host in one remote command, parsed. Pure: no pyinfra.

The pyinfra layer (pyinfra_ext/doctor_facts.py) assembles the shell script from the
sections below and the stages' own listing scripts; every line it prints carries a tag,
and `parse_doctor_probe` sorts them into a `DoctorProbe`. Nothing on the host is written.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoglm_infra.stages.model.state import ModelDirState, parse_listing, split_lines
from autoglm_infra.stages.network.files import NETWORK_ENV
from autoglm_infra.stages.python_env.venv import STAMP_FILE, parse_dist_info

MODEL_TEXT_FILES = (
    "config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "NRestarts")
# Only these fields of `docker inspect`: the container's Env holds the API key.
DOCKER_FORMAT = (
    "{{.Name}}|{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|"
    "{{.HostConfig.Privileged}}|{{json .HostConfig.PortBindings}}"
)
REACH_TIMEOUT_S = 5

# Run on the host with python3: answers every URL in parallel (any HTTP status = it
# answers); the proxy (scheme "tcp") only needs to accept a connection. A "model download"
# (one file of the lock, resolved as the pull does) follows ONE redirect by hand and then
# probes where it lands, so a CDN host the firewall blocks shows: "http 302 -> URL: error".
REACH_SCRIPT = """
import socket, sys, threading, urllib.error, urllib.parse, urllib.request
class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None
def status(url, follow):
    request = urllib.request.Request(url, headers={} if follow else {"Range": "bytes=0-0"})
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(Stay)
    try:
        with opener.open(request, timeout=%d) as answer:
            return answer.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location")
def probe(kind, url):
    try:
        parts = urllib.parse.urlsplit(url)
        if kind == "proxy":
            port = parts.port or (443 if parts.scheme == "https" else 80)
            socket.create_connection((parts.hostname, port), timeout=%d).close()
            result = "tcp connect"
        else:
            code, location = status(url, kind != "model download")
            result = "http %%d" %% code
            if location and code in (301, 302, 303, 307, 308):
                target = urllib.parse.urljoin(url, location)
                site = "%%s://%%s" %% urllib.parse.urlsplit(target)[:2]
                try:
                    result += " -> %%s: http %%d" %% (site, status(target, False)[0])
                except Exception as exc:
                    why = str(getattr(exc, "reason", exc) or type(exc).__name__)
                    result += " -> %%s: error %%s" %% (site, why)
    except Exception as exc:
        result = "error " + str(getattr(exc, "reason", exc) or type(exc).__name__)
    line = "NR\\t%%s\\t%%s\\t%%s\\n" %% (kind, url, result.replace("\\n", " "))
    with printing:  # print() writes text and newline apart: threads would interleave lines
        sys.stdout.write(line)
printing = threading.Lock()
args = sys.argv[1:]
pairs = zip(args[0::2], args[1::2])
threads = [threading.Thread(target=probe, args=pair) for pair in pairs]
[t.start() for t in threads]
[t.join() for t in threads]
""" % (REACH_TIMEOUT_S, REACH_TIMEOUT_S)  # noqa: UP031 (braces in the script)


@dataclass(frozen=True)
class CacheDir:
    path: str
    exists: bool
    owner: str = ""
    mode: str = ""
    writable: bool = False  # by the service user (access(2) as that user, nothing written)
    mount: str = ""  # mount point holding it ("/" = the root filesystem)


@dataclass(frozen=True)
class PathAccess:
    """A model or cache directory as the service user meets it (access(2) as that user)."""

    path: str
    role: str  # "model", "home" or a cache variable such as TRITON_CACHE_DIR
    exists: bool
    mount: str = ""  # mount point holding it
    fstype: str = ""
    options: tuple[str, ...] = ()  # mount options: rw/ro, noexec, ...
    context: str = ""  # SELinux context ("" where the kernel has no SELinux)
    access: str = ""  # any of "r", "w", "x" the service user has

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    @property
    def noexec(self) -> bool:
        return "noexec" in self.options


@dataclass(frozen=True)
class CacheEntry:
    """A top-level entry of a version-keyed compile cache."""

    path: str
    owner: str
    newer_than_venv: bool  # anything inside written after the venv was built


@dataclass(frozen=True)
class Container:
    name: str
    status: str
    health: str  # "", starting, healthy, unhealthy
    privileged: bool
    bindings: tuple[str, ...]  # host IPs of published ports ("" = every interface)


@dataclass(frozen=True)
class Reach:
    kind: str
    url: str
    result: str  # "http 200", "tcp connect" or "error <reason>"

    @property
    def answered(self) -> bool:
        return not self.result.startswith("error")


@dataclass(frozen=True)
class DoctorProbe:
    model: ModelDirState = field(default_factory=ModelDirState)
    model_texts: dict[str, str] = field(default_factory=dict)  # name -> content (one line)
    unit: dict[str, str] = field(default_factory=dict)  # systemctl show properties
    venv_stamp: str | None = None
    venv_dists: dict[str, str] | None = None  # None: no venv there
    pip_check: list[str] | None = None  # None: not run (no venv)
    caches: dict[str, CacheDir] = field(default_factory=dict)
    docker: bool = False  # the docker CLI is installed
    containers: list[Container] = field(default_factory=list)
    reach: list[Reach] = field(default_factory=list)
    smoke: list[str] = field(default_factory=list)  # the smoke tool's output lines
    lsm: dict[str, str] = field(default_factory=dict)  # selinux, apparmor, confinement
    paths: dict[str, PathAccess] = field(default_factory=dict)
    model_unreadable: list[str] = field(default_factory=list)  # as the service user
    venv_built: int | None = None  # mtime of the venv's lock stamp (when it was built)
    cache_entries: list[CacheEntry] = field(default_factory=list)
    foreign_owned: list[tuple[str, str]] = field(default_factory=list)  # (owner, path)
    user_exists: bool = False  # the user the engine runs as is known to the host
    complete: bool = False  # the probe ran to its last line (an empty probe read nothing)


def model_section(model_dir: str) -> str:
    """The model files' contents this doctor parses (small JSON files, newlines dropped)."""
    parts = []
    for name in MODEL_TEXT_FILES:
        q = shlex.quote(f"{model_dir}/{name}")
        parts.append(f"if [ -f {q} ]; then printf 'MT\\t%s\\t' {name}; tr -d '\\n' < {q}; echo; fi")
    parts.append(f"q={shlex.quote(f'{model_dir}/.autoglm/plan.json')}")
    parts.append(
        "if [ -f \"$q\" ]; then printf 'MT\\tplan.json\\t'; tr -d '\\n' < \"$q\"; echo; fi"
    )
    return "; ".join(parts)


def unit_section(unit: str) -> str:
    props = " ".join(f"-p {p}" for p in UNIT_PROPERTIES)
    return f"systemctl show {props} {shlex.quote(unit)} 2>/dev/null | sed 's/^/SV /'"


def venv_section(venv_dir: str) -> str:
    v = shlex.quote(venv_dir)
    return (
        f"if [ -d {v}/bin ]; then echo VENV; "
        f'[ -f {v}/{STAMP_FILE} ] && echo "VS $(cat {v}/{STAMP_FILE})"; '
        f"for d in {v}/lib/python3*/site-packages/*.dist-info; do "
        '[ -d "$d" ] && echo "VD ${d##*/}"; done; '
        f"timeout 120 {v}/bin/python -m pip check --disable-pip-version-check 2>&1 "
        "| sed 's/^/VC /'; "
        "echo VCEND; fi"
    )


def cache_section(user: str, dirs: Sequence[str]) -> str:
    u = shlex.quote(user)
    parts = []
    for path in dirs:
        q = shlex.quote(path)
        parts.append(
            f"if [ -d {q} ]; then w=r; runuser -u {u} -- test -w {q} -a -x {q} 2>/dev/null && w=w; "
            f"printf 'CD\\t%s\\t%s\\t%s\\t%s\\n' \"$(stat -c '%U %a' {q})\" \"$w\" "
            f'"$(findmnt -n -o TARGET -T {q} 2>/dev/null)" {q}; '
            f"else printf 'CD\\t-\\t-\\t-\\t%s\\n' {q}; fi"
        )
    return "; ".join(parts) or "true"


def docker_section() -> str:
    fmt = shlex.quote(DOCKER_FORMAT)
    return (
        "if command -v docker >/dev/null 2>&1; then echo DOCKER; "
        f'for c in $(docker ps -q 2>/dev/null); do docker inspect -f {fmt} "$c" 2>/dev/null '
        "| sed 's/^/DK /'; done; fi"
    )


def reach_section(
    targets: Sequence[tuple[str, str]], env: Mapping[str, str], env_file: str = NETWORK_ENV
) -> str:
    """python3 on the host probes each (kind, url) through the proxy.

    With the network stage's root-only `env_file` present, the probe uses it, login
    included, exactly as pip and npm do: a mirror behind an authenticating proxy then
    answers itself instead of the proxy's 407. Otherwise `env` (no login) is used. The
    login goes through the environment, never argv.
    """
    if not targets:
        return "true"
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    args = " ".join(shlex.quote(x) for pair in targets for x in pair)
    probe = f"python3 -c {shlex.quote(REACH_SCRIPT)} {args} 2>&1"
    f = shlex.quote(env_file)
    return (
        f"if [ -r {f} ]; then (set -a; . {f}; set +a; {probe}); else {assign} {probe}; fi || true"
    )


def lsm_section(unit: str, root: str = "", container: str = "") -> str:
    """SELinux mode, AppArmor on/off and the label confining the server's process: the
    unit's main process, or in Docker mode the container's (the unit runs `docker run`).

    `root` prefixes /sys and /proc (tests point it at recorded copies).
    """
    u = shlex.quote(unit)
    pid = (
        f"$(docker inspect -f '{{{{.State.Pid}}}}' {shlex.quote(container)} 2>/dev/null)"
        if container
        else f"$(systemctl show -p MainPID --value {u} 2>/dev/null)"
    )
    return (
        f"r={shlex.quote(root)}; "
        'f=$r/sys/fs/selinux/enforce; [ -r $f ] && echo "LS selinux $(cat $f)"; '
        'f=$r/sys/module/apparmor/parameters/enabled; [ -r $f ] && echo "LS apparmor $(cat $f)"; '
        f"pid={pid}; "
        'if [ -n "$pid" ] && [ "$pid" != 0 ]; then '
        "echo \"LS confinement $(tr -d '\\000' < $r/proc/$pid/attr/current 2>/dev/null)\"; "
        "f=$r/proc/$pid/attr/apparmor/current; "  # AppArmor's own label when LSMs are stacked
        "[ -r $f ] && echo \"LS apparmor_label $(tr -d '\\000' < $f 2>/dev/null)\"; fi"
    )


END_MARK = "DOCTOR_END"


def user_section(user: str) -> str:
    """`UE yes` when the engine's user exists (Docker's numeric UID:GID needs no entry)."""
    uid, sep, gid = user.partition(":")
    if sep and uid.isdigit() and gid.isdigit():
        return "echo 'UE yes'"
    return f"id -u {shlex.quote(user)} >/dev/null 2>&1 && echo 'UE yes'"


def as_user_prefix(user: str) -> str:
    """Run a command as the service user: a name (runuser) or UID:GID (setpriv, Docker's)."""
    uid, sep, gid = user.partition(":")
    if sep and uid.isdigit() and gid.isdigit():
        return f"setpriv --reuid={uid} --regid={gid} --clear-groups --"
    return f"runuser -u {shlex.quote(user)} --"


def paths_section(as_user: str, roles: Sequence[tuple[str, str]]) -> str:
    """Per (role, path): mount, fs type, options, SELinux context, r/w/x as the user."""
    parts = []
    for role, path in roles:
        q = shlex.quote(path)
        parts.append(
            f"if [ -d {q} ]; then a=; for m in r w x; do "
            f"{as_user} test -$m {q} 2>/dev/null && a=$a$m; done; "
            f"m=$(findmnt -n -o TARGET,FSTYPE,OPTIONS -T {q} 2>/dev/null | tr -s ' ' '\\t'); "
            f"c=$(stat -c %C {q} 2>/dev/null); "
            f'printf \'PA\\t%s\\t%s\\t%s\\t%s\\t%s\\n\' {shlex.quote(role)} "$a" "$c" '
            f"\"$m\" {q}; else printf 'PA\\t%s\\t-\\t\\t\\t\\t\\t%s\\n' "
            f"{shlex.quote(role)} {q}; fi"
        )
    return "; ".join(parts) or "true"


def model_access_section(as_user: str, model_dir: str, limit: int = 20) -> str:
    """Model files and directories the service user cannot read (find's own errors too)."""
    q = shlex.quote(model_dir)
    control = shlex.quote(f"{model_dir}/.autoglm")
    return (
        # from /: find as another user must be able to return to its working directory
        f"[ -d {q} ] && (cd / && {as_user} find {q} -maxdepth 3 -path {control} -prune -o "
        "'(' '!' -readable -o -type d '!' -executable ')' -print 2>&1) "
        f"| head -n {limit} | sed 's/^/PU\\t/'"
    )


def cache_entries_section(
    user: str, stamp: str, roots: Sequence[str], home: str, limit: int = 50
) -> str:
    """Compile-cache entries (new or older than the venv) and files not owned by the user."""
    s = shlex.quote(stamp)
    parts = [f's={s}; [ -f "$s" ] && echo "CS $(stat -c %Y "$s")"']
    for root in roots:
        r = shlex.quote(root)
        parts.append(
            f'for e in {r}/*; do [ -e "$e" ] || continue; n=old; '
            '[ -f "$s" ] && [ -n "$(find "$e" -newer "$s" -print -quit 2>/dev/null)" ] && n=new; '
            'printf \'CE\\t%s\\t%s\\t%s\\n\' "$n" "$(stat -c %U "$e")" "$e"; '
            f"done | head -n {limit}"
        )
    h = shlex.quote(home)
    parts.append(
        f"[ -d {h} ] && find {h} -mindepth 1 '!' -user {shlex.quote(user)} "
        "-printf 'CO\\t%u\\t%p\\n' 2>/dev/null | head -n 20"
    )
    return "; ".join(parts)


def _path(line: str) -> PathAccess | None:
    parts = line.split("\t")
    if len(parts) != 8:
        return None
    _, role, access, context, mount, fstype, options, path = parts
    if access == "-":
        return PathAccess(path, role, False)
    return PathAccess(
        path,
        role,
        True,
        mount,
        fstype,
        tuple(o for o in options.split(",") if o),
        "" if context in ("", "?") else context,
        access,
    )


def _cache(line: str) -> CacheDir | None:
    parts = line.split("\t", 4)
    if len(parts) != 5:
        return None
    _, owner_mode, writable, mount, path = parts
    if owner_mode == "-":
        return CacheDir(path, False)
    owner, _, mode = owner_mode.partition(" ")
    return CacheDir(path, True, owner, mode, writable == "w", mount)


def _container(line: str) -> Container | None:
    parts = line.split("|", 4)
    if len(parts) != 5:
        return None
    name, status, health, privileged, bindings_json = parts
    ips: list[str] = []
    try:
        bindings: Any = json.loads(bindings_json) or {}
        for entries in bindings.values():
            ips += [str(e.get("HostIp", "")) for e in entries or []]
    except (ValueError, AttributeError):
        pass
    return Container(name.lstrip("/"), status, health, privileged == "true", tuple(ips))


def parse_doctor_probe(lines: Sequence[str]) -> DoctorProbe:
    model_lines, rest = split_lines(list(lines))
    texts: dict[str, str] = {}
    unit: dict[str, str] = {}
    stamp = None
    dists: list[str] | None = None
    pip_lines: list[str] | None = None
    caches: dict[str, CacheDir] = {}
    docker = False
    containers: list[Container] = []
    reach: list[Reach] = []
    smoke: list[str] = []
    lsm: dict[str, str] = {}
    paths: dict[str, PathAccess] = {}
    unreadable: list[str] = []
    venv_built = None
    entries: list[CacheEntry] = []
    foreign: list[tuple[str, str]] = []
    user_exists = complete = False
    for line in rest:
        tag, _, value = line.partition(" ")
        if line.startswith("MT\t"):
            _, name, content = [*line.split("\t", 2), ""][:3]
            texts[name] = content
        elif tag == "SV":
            key, _, prop = value.partition("=")
            unit[key] = prop
        elif line == "VENV":
            dists, pip_lines = [], []
        elif tag == "VS":
            stamp = value.strip()
        elif tag == "VD" and dists is not None:
            dists.append(value.strip())
        elif tag == "VC" and pip_lines is not None:
            pip_lines.append(value.strip())
        elif line.startswith("CD\t"):
            if (found := _cache(line)) is not None:
                caches[found.path] = found
        elif line == "DOCKER":
            docker = True
        elif tag == "DK":
            if (container := _container(value)) is not None:
                containers.append(container)
        elif line.startswith("NR\t"):
            parts = line.split("\t", 3)
            if len(parts) == 4:
                reach.append(Reach(parts[1], parts[2], parts[3]))
        elif tag == "SM":
            smoke.append(value)
        elif tag == "LS":
            key, _, label = value.partition(" ")
            lsm[key] = label.strip()
        elif line.startswith("PA\t"):
            if (access := _path(line)) is not None:
                paths[access.path] = access
        elif line.startswith("PU\t"):
            unreadable.append(line[3:])
        elif tag == "CS" and value.strip().isdigit():
            venv_built = int(value)
        elif line.startswith("CE\t"):
            parts = line.split("\t", 3)
            if len(parts) == 4:
                entries.append(CacheEntry(parts[3], parts[2], parts[1] == "new"))
        elif line == "UE yes":
            user_exists = True
        elif line == END_MARK:
            complete = True
        elif line.startswith("CO\t"):
            parts = line.split("\t", 2)
            if len(parts) == 3:
                foreign.append((parts[1], parts[2]))
    return DoctorProbe(
        model=parse_listing(model_lines),
        model_texts=texts,
        unit=unit,
        venv_stamp=stamp,
        venv_dists=parse_dist_info(dists) if dists is not None else None,
        pip_check=pip_lines,
        caches=caches,
        docker=docker,
        containers=containers,
        reach=reach,
        smoke=smoke,
        lsm=lsm,
        paths=paths,
        model_unreadable=unreadable,
        venv_built=venv_built,
        cache_entries=entries,
        foreign_owned=foreign,
        user_exists=user_exists,
        complete=complete,
    )
