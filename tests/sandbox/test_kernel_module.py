"""The kernel module rows read real DKMS state (issue 15, item 3).

A sandbox host gets Debian's `dkms` and the headers of Debian's cloud kernel, then the
stand-in driver package (autoglm_testbed/dkms_standin.py, shaped like NVIDIA's
nvidia-kernel-dkms): DKMS really compiles its module for that kernel. The host runs the
controller's kernel, for which no headers exist, which is the state of a host that booted
a new kernel without them: gpu_check must name the running kernel, the kernel the module
was built for, and the fix. Read as if booted into the built-for kernel (a `uname` shim,
the only thing not real), the same probe reads the DKMS module as built and signed with
the key Debian's dkms generates for itself. One host for
the module; Debian's packages come through the controller's apt mirror like every host's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.stages.nvidia.gpu_checks import evaluate_gpu, gpu_probe_script, parse_gpu_probe
from autoglm_testbed.converge import run_pyinfra
from autoglm_testbed.dkms_standin import build_dkms_deb
from autoglm_testbed.hosts import SandboxHost, write_inventory
from autoglm_testbed.nvidia_repo import NvidiaRepoStandin
from autoglm_testbed.world import sandbox_group_data

VERSION = "550.54.15"
INSTALL = (
    "export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && "
    "apt-get install -y -q --no-install-recommends dkms linux-headers-cloud-amd64 >/dev/null"
)


@pytest.fixture(scope="module")
def dkms_host(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    nvidia_repo: NvidiaRepoStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path, str]:
    (host,) = sandbox_hosts(1)
    host.ssh(INSTALL, timeout=900)
    deb = build_dkms_deb(tmp_path_factory.mktemp("dkms"), VERSION)
    subprocess.run(
        host.ssh_argv(f"cat > /tmp/{deb.name}"), input=deb.read_bytes(), check=True, timeout=60
    )
    built_for = host.ssh(
        "ls /usr/src | sed -n 's/^linux-headers-\\(.*-cloud-amd64\\)$/\\1/p' | sort -V | tail -n1"
    ).stdout.strip()
    assert built_for, "linux-headers-cloud-amd64 installed no headers"
    # dh_dkms's postinst builds for the running kernel and the newest one with headers;
    # autoinstall is what an operator runs when a kernel was missed (a no-op otherwise)
    host.ssh(f"dpkg -i /tmp/{deb.name} && dkms autoinstall -k {built_for}", timeout=900)
    inventory = tmp_path_factory.mktemp("kmod") / "inventory.py"
    write_inventory(inventory, [host], {}, sandbox_group_data(nvidia_repo))
    return host, inventory, built_for


def test_dkms_really_built_the_module_for_the_debian_kernel(
    dkms_host: tuple[SandboxHost, Path, str],
) -> None:
    host, _, built_for = dkms_host
    status = host.ssh("dkms status nvidia").stdout
    assert f"nvidia/{VERSION}, {built_for}, x86_64: installed" in status, status
    vermagic = host.ssh(f"modinfo -k {built_for} -F vermagic nvidia").stdout
    assert vermagic.startswith(f"{built_for} "), vermagic  # compiled against those headers


def test_gpu_check_names_the_running_kernel_and_the_fix(
    dkms_host: tuple[SandboxHost, Path, str], tmp_path: Path
) -> None:
    host, inventory, built_for = dkms_host
    running = host.ssh("uname -r").stdout.strip()
    assert running != built_for
    result = run_pyinfra(
        inventory, "deploys/gpu_check.py", env={"AUTOGLM_CHECKS_JSON": str(tmp_path)}
    )
    assert result.changed() == [] and "Traceback" not in result.stderr
    report = json.loads((tmp_path / f"{host.name}.gpu_check.json").read_text())
    rows = {c["name"]: c for c in report["checks"]}
    built = rows["module built"]
    assert built["status"] == "fail", rows
    assert f"no nvidia module for the running kernel {running}" in built["evidence"]
    assert f"DKMS has nvidia {VERSION} for {built_for}" in built["evidence"]
    assert f"linux-headers-{running}" in built["fix"] and "dkms autoinstall" in built["fix"]
    assert rows["module loaded"]["status"] == "skip"
    assert "module built" in result.stderr  # the table on the terminal names it too


def test_booted_into_the_built_for_kernel_the_module_reads_as_built(
    dkms_host: tuple[SandboxHost, Path, str],
) -> None:
    host, _, built_for = dkms_host
    shim = f"mkdir -p /tmp/shim && printf '#!/bin/sh\\necho {built_for}\\n' > /tmp/shim/uname"
    host.ssh(f"{shim} && chmod +x /tmp/shim/uname")
    script = gpu_probe_script(["nvidia-*"])
    out = subprocess.run(
        host.ssh_argv("PATH=/tmp/shim:$PATH sh -s"),
        input=script,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    probe = parse_gpu_probe(out.splitlines())
    state = probe.kernel_module
    assert state.kernel == built_for
    assert state.file == f"/lib/modules/{built_for}/updates/dkms/nvidia.ko", out
    # Debian 12's dkms makes its own key (/var/lib/dkms/mok.key) and signs what it builds
    assert state.file_version == VERSION and state.signer == "DKMS module signing key"
    rows = {c.name: c for c in evaluate_gpu(HostProfile(), probe, VERSION, "12.4", [])}
    assert rows["module built"].status == "ok", rows["module built"]
    assert "built by DKMS, signed by DKMS module signing key" in rows["module built"].evidence
    assert f"DKMS: {VERSION} installed" in rows["module built"].evidence
    assert rows["module loaded"].status == "skip"
    assert "no NVIDIA GPU" in rows["module loaded"].evidence
