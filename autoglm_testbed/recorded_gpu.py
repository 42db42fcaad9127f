"""Prepare a sandbox host like the recorded real H200 host (issue 24), by replay only.

The host gets an `nvidia-smi` that replays the outputs recorded on that host
(tests/fixtures/recorded, verbatim copies; never written from our own idea of them) and
answers only the invocations that were recorded or are read off those recordings, plus
the NVIDIA packages the recorded probe listed, at their recorded versions, and the
recorded holds among them. Nothing else of a driver is faked: no kernel module (a
container cannot load one), no PCI device. Like the real host, no dpkg package owns
nvidia-smi: the driver is "installed outside apt".
"""

from __future__ import annotations

import io
import shlex
import subprocess
import tarfile
from pathlib import Path

from autoglm_infra.stages.nvidia.gpu_checks import SMI_QUERY
from autoglm_testbed.hosts import SandboxError, SandboxHost

RECORDED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "recorded"
ON_HOST = "/usr/share/autoglm-standin/recorded"
SMI, SMI_Q, PROBE = "h200-nvidia-smi.txt", "h200-nvidia-smi-q.txt", "h200-gpu-probe.txt"


def recorded_probe() -> list[str]:
    return (RECORDED / PROBE).read_text().splitlines()


def recorded_driver() -> str:
    """The driver version nvidia-smi -q reported on the recorded host."""
    for line in (RECORDED / SMI_Q).read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Driver Version":
            return value.strip()
    raise SandboxError(f"{RECORDED / SMI_Q} names no Driver Version")


def nvidia_smi_standin() -> str:
    """/usr/bin/nvidia-smi: each answer is a recorded output or a line of one."""
    query = f"--query-gpu={SMI_QUERY} --format=csv,noheader,nounits"
    return f"""#!/bin/sh
# Stand-in nvidia-smi (autoglm-infra tests): replays outputs recorded on a real H200 host
# (tests/fixtures/recorded). Anything not recorded is refused, never made up.
d={ON_HOST}
case "$*" in
  "") cat "$d/{SMI}" ;;
  "-q") cat "$d/{SMI_Q}" ;;
  "{query}") sed -n 's/^gpu=//p' "$d/{PROBE}" ;;
  "--query-gpu=driver_version --format=csv,noheader")
    sed -n 's/^Driver Version *: *//p' "$d/{SMI_Q}" ;;
  *) echo "stand-in nvidia-smi: no recorded output for: $*" >&2; exit 2 ;;
esac
"""


def recorded_packages() -> list[tuple[str, str]]:
    found = []
    for line in recorded_probe():
        key, _, value = line.partition("=")
        name, _, version = value.partition(" ")
        if key == "pkg" and version:
            found.append((name, version))
    return found


def recorded_holds() -> list[str]:
    """Holds of the recorded host whose package (with its version) was recorded too."""
    installed = {name for name, _ in recorded_packages()}
    return [v for k, _, v in (ln.partition("=") for ln in recorded_probe()) if k == "held"
            and v in installed]  # fmt: skip


def packages_script(packages: list[tuple[str, str]], holds: list[str]) -> str:
    """Build empty packages with the recorded names and versions on the host, install them
    with dpkg (as the vendor image had them) and hold what the recorded host held."""
    lines = ["set -e", "w=$(mktemp -d)"]
    for name, version in packages:
        control = (
            f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: autoglm-infra tests <tests@invalid>\n"
            f"Description: stand-in for {name} {version} as recorded on a real H200 host\n"
        )
        d = f"$w/{name}"
        lines += [
            f"mkdir -p {d}/DEBIAN",
            f"printf %s {shlex.quote(control)} > {d}/DEBIAN/control",
            f"dpkg-deb -b -Znone {d} $w/{name}.deb >/dev/null",
        ]
    lines += ['dpkg -i "$w"/*.deb >/dev/null', 'rm -rf "$w"']
    if holds:
        lines.append("apt-mark hold " + " ".join(holds) + " >/dev/null")
    return "\n".join(lines)


def _put(host: SandboxHost, files: dict[str, tuple[bytes, int]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    result = subprocess.run(
        host.ssh_argv("tar -xf - -C / --no-same-owner"),
        input=buffer.getvalue(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise SandboxError(f"{host.name}: copying the recorded stand-in failed: {result.stderr!r}")


def prepare_like_recorded_host(host: SandboxHost) -> None:
    """nvidia-smi replaying the recordings, the recorded CUDA 13 / cuDNN packages, holds."""
    files = {
        f"{ON_HOST}/{name}": ((RECORDED / name).read_bytes(), 0o644) for name in (SMI, SMI_Q, PROBE)
    }
    files["/usr/bin/nvidia-smi"] = (nvidia_smi_standin().encode(), 0o755)
    _put(host, files)
    host.ssh(packages_script(recorded_packages(), recorded_holds()), timeout=300)
