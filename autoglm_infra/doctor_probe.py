"""What the doctor reads from a host in one remote command, parsed. Pure: no pyinfra.

The pyinfra layer (pyinfra_ext/doctor_facts.py) assembles the shell script from the
sections below and the stages' own listing scripts; every line it prints carries a tag,
and `parse_probe` sorts them into a `DoctorProbe`. Nothing on the host is written.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoglm_infra.model_state import ModelDirState, parse_listing, split_lines
from autoglm_infra.python_env import STAMP_FILE, parse_dist_info

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
# answers); the proxy (scheme "tcp") only needs to accept a connection.
REACH_SCRIPT = """
import socket, sys, threading, urllib.error, urllib.parse, urllib.request
def probe(kind, url):
    try:
        parts = urllib.parse.urlsplit(url)
        if kind == "proxy":
            port = parts.port or (443 if parts.scheme == "https" else 80)
            socket.create_connection((parts.hostname, port), timeout=%d).close()
            result = "tcp connect"
        else:
            try:
                with urllib.request.urlopen(url, timeout=%d) as answer:
                    result = "http %%d" %% answer.status
            except urllib.error.HTTPError as exc:
                result = "http %%d" %% exc.code
    except Exception as exc:
        result = "error " + str(getattr(exc, "reason", exc) or type(exc).__name__)
    print("NR\\t%%s\\t%%s\\t%%s" %% (kind, url, result.replace("\\n", " ")))
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


def reach_section(targets: Sequence[tuple[str, str]], env: Mapping[str, str]) -> str:
    """python3 on the host probes each (kind, url); `env` carries the proxy variables."""
    if not targets:
        return "true"
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    args = " ".join(shlex.quote(x) for pair in targets for x in pair)
    return f"{assign} python3 -c {shlex.quote(REACH_SCRIPT)} {args} 2>&1 || true"


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


def parse_probe(lines: Sequence[str]) -> DoctorProbe:
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
    )
