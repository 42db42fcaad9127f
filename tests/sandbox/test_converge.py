"""A real converge of sandbox hosts: NVIDIA stack from the signed stand-in repository.

The stand-in (autoglm_infra/stages/nvidia/nvidia_repo_packages.yaml) carries NVIDIA's dependency
shapes and newer
releases and branches (580.126.09, 590.48.01, 595.71.05), so an unpinned closure would
land on them. One host is converged and then moved between plans for the module; the
scenarios that need an untouched host boot their own (2 s each).
"""

from __future__ import annotations

import difflib
import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_infra.stages.nvidia.apt_check import driver_release
from autoglm_testbed.converge import (
    ROOT,
    converge_twice,
    describe_failure,
    pyinfra_bin,
    run_pyinfra,
)
from autoglm_testbed.hosts import SandboxHost
from autoglm_testbed.nvidia_repo import NvidiaRepoStandin
from autoglm_testbed.world import sandbox_group_data

MANAGED = (
    "/etc/apt/keyrings/autoglm-nvidia-cuda.gpg /etc/apt/sources.list.d/autoglm-nvidia-cuda.sources"
)
CLOSURE_PIN = "/etc/apt/preferences.d/autoglm-nvidia-pin"
# What the default plan (Debian 12, no GPU -> open, R580; serve_engine_version auto -> vLLM
# 0.33.0 on CUDA 13.0) installs: the table's pinned versions, written out here so the test
# does not agree with the resolver by construction.
TOOLKIT = ("cuda-toolkit-13-0", "13.0.2-1")
CUDNN = "9.17.1.4-1"

# preflight + nvidia only: the later stages are converged by test_full.py
DEPLOY = "tests/sandbox/deploys/preflight_nvidia.py"


def held_versions(host: SandboxHost) -> dict[str, tuple[str, bool]]:
    out = host.ssh(
        "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' "
        "'nvidia-*' 'libnvidia-*' 'libcuda*' 'cuda-*' 'cudnn*' 'libcudnn*' 2>/dev/null || true"
    ).stdout
    result = {}
    for line in out.splitlines():
        fields = line.split()  # "un name" (known, not installed) has no version
        if len(fields) != 3:
            continue
        status, name, version = fields
        if status[1] == "i":
            result[name] = (version, status[0] == "h")
    return result


def assert_stack(host: SandboxHost, release: str, planned: dict[str, str]) -> None:
    """Every NVIDIA package on the host is at the planned release, planned ones held."""
    installed = held_versions(host)
    for name, version in planned.items():
        assert installed.get(name) == (version, True), (name, installed)
    drivers = {n: v for n, (v, _) in installed.items() if driver_release(n, v)}
    assert len(drivers) >= 5, installed  # the closure, not just the meta package
    assert {driver_release(n, v) for n, v in drivers.items()} == {release}, drivers
    cudnn = {v for n, (v, _) in installed.items() if "cudnn" in n}
    assert cudnn == {CUDNN}, installed
    assert installed[TOOLKIT[0]] == (TOOLKIT[1], True)


def upgrades_offered(host: SandboxHost) -> list[str]:
    """NVIDIA packages `apt-get -s dist-upgrade` would touch (the repository offers newer)."""
    out = host.ssh("apt-get update -q >/dev/null && apt-get -s -q dist-upgrade", timeout=300)
    return [
        line
        for line in out.stdout.splitlines()
        if line.startswith(("Inst", "Remv"))
        and any(k in line.split()[1] for k in ("nvidia", "cuda", "cudnn"))
    ]


HOLD_LOCKS = """
import fcntl, os, sys, time
for path in sys.argv[2:]:
    fcntl.lockf(os.open(path, os.O_RDWR | os.O_CREAT, 0o640), fcntl.LOCK_EX)
open("/run/apt-locks-held", "w").close()
time.sleep(float(sys.argv[1]))
os.unlink("/run/apt-locks-held")
"""
LISTS_LOCK = ("/var/lib/apt/lists/lock",)
DPKG_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")


def hold_apt_locks(host: SandboxHost, locks: tuple[str, ...], seconds: float) -> None:
    """Hold apt's or dpkg's locks on the host as they do (POSIX record locks), in the
    background, as apt-daily or a killed converge's apt does; returns once they are held."""
    host.ssh(
        f"setsid python3 -c {shlex.quote(HOLD_LOCKS)} {seconds} {' '.join(locks)} "
        "</dev/null >/dev/null 2>&1 & "
        "for _ in $(seq 100); do [ -e /run/apt-locks-held ] && exit 0; sleep 0.1; done; exit 1"
    )


def nothing_written(host: SandboxHost) -> bool:
    return host.ssh(f"ls {MANAGED} 2>/dev/null || true").stdout.strip() == ""


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    nvidia_repo: NvidiaRepoStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path]:
    from autoglm_testbed.hosts import write_inventory

    (host,) = sandbox_hosts(1)
    inventory = tmp_path_factory.mktemp("converge") / "inventory.py"
    write_inventory(inventory, [host], {}, sandbox_group_data(nvidia_repo))
    return host, inventory


def changed_lines(before: str, after: str) -> str:
    return "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm=""))


def apt_state(host: SandboxHost) -> str:
    """What a preview must leave as it was: apt's configuration, lists, caches, packages."""
    return host.ssh(
        "find /etc/apt /var/lib/apt/lists /var/cache/apt -printf '%p %s %T@\\n' | sort; "
        "dpkg-query -W -f='${Package} ${Version}\\n' | md5sum"
    ).stdout


def test_a_dry_run_of_a_fresh_host_previews_and_changes_nothing(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    before = apt_state(host)
    preview = run_pyinfra(inventory, DEPLOY, "--dry")
    assert preview.returncode == 0, describe_failure(preview)
    assert "Traceback" not in preview.stderr, preview.stderr[-3000:]
    after = apt_state(host)
    assert after == before, changed_lines(before, after)
    assert nothing_written(host)


def test_converge_installs_exactly_the_plan_and_second_run_changes_nothing(
    world: tuple[SandboxHost, Path],
) -> None:
    host, inventory = world
    first, second = converge_twice(inventory, DEPLOY)
    assert first.changed(), "a fresh host must change on its first converge"
    assert_stack(host, "580.95.05", {"nvidia-open-580": "580.95.05-1"})
    assert upgrades_offered(host) == []  # the repository offers 580.126.09, 590, 595
    assert "Pin: version 580.95.05-*" in host.ssh(f"cat {CLOSURE_PIN}").stdout
    assert host.ssh("stat -c %a /etc/apt/keyrings/autoglm-nvidia-cuda.gpg").stdout.strip() == "644"
    unattended = host.ssh("cat /etc/apt/apt.conf.d/51autoglm-nvidia-no-unattended-upgrades").stdout
    assert '"nvidia-";' in unattended and '"libcudnn";' in unattended
    assert "nvidia_uvm" in host.ssh("cat /etc/modules-load.d/autoglm-nvidia-uvm.conf").stdout
    assert "no NVIDIA GPU" in second.stderr or second.returncode == 0


def test_point_release_upgrade_ends_pinned_and_a_missing_release_changes_nothing(
    world: tuple[SandboxHost, Path],
) -> None:
    """580.95.05 -> 580.126.09 moves the whole closure; a release the repository lacks stops
    before any package changes, naming what it offers."""
    host, inventory = world
    run_pyinfra(inventory, DEPLOY)  # converged, whatever ran before
    # a preview asks apt for real, in a scratch copy of its lists and caches
    untouched = apt_state(host)
    preview = run_pyinfra(inventory, DEPLOY, "--data", "nvidia_driver_version=580.126.09", "--dry")
    assert preview.returncode == 0, describe_failure(preview)
    after = apt_state(host)
    assert after == untouched, changed_lines(untouched, after)
    # without -y pyinfra detects the changes, then asks: a "no" must leave apt alone too
    declined = subprocess.run(
        [pyinfra_bin(), str(inventory), DEPLOY, "--data", "nvidia_driver_version=580.126.09"],
        input="n\n", capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in declined.stderr, declined.stderr[-3000:]
    after = apt_state(host)
    assert after == untouched, changed_lines(untouched, after)
    # apt-daily (or a killed converge's apt-get update) holds the lists' lock as it starts:
    # apt-get update alone fails at once; the converge waits for the lock (CI stop 29)
    hold_apt_locks(host, LISTS_LOCK, seconds=12)
    assert "held by process" in host.ssh("apt-get update -q 2>&1", check=False).stdout
    up = run_pyinfra(inventory, DEPLOY, "--data", "nvidia_driver_version=580.126.09")
    assert up.returncode == 0, describe_failure(up)
    assert up.seconds >= 8, f"converged in {up.seconds:.1f} s while apt's lists were locked"
    assert_stack(host, "580.126.09", {"nvidia-open-580": "580.126.09-1"})
    assert upgrades_offered(host) == []
    before = (held_versions(host), host.ssh(f"cat {CLOSURE_PIN}").stdout)
    gone = run_pyinfra(inventory, DEPLOY, "--data", "nvidia_driver_version=580.82.07")
    assert gone.returncode != 0
    for text in ("nvidia-open-580 580.82.07-1 is not in the repository",
                 "newest 580.x is 580.126.09", "nvidia_driver_version"):  # fmt: skip
        assert text in gone.stderr, gone.stderr[-2000:]
    assert "Traceback" not in gone.stderr
    assert (held_versions(host), host.ssh(f"cat {CLOSURE_PIN}").stdout) == before


def test_branch_change_to_590_and_the_volta_plan_stay_pinned(
    world: tuple[SandboxHost, Path],
) -> None:
    """580 -> 590 (unsuffixed names, NVIDIA's version-locking package first), then the plan a
    Volta/Pascal host gets (proprietary R580, whose cuda-drivers-580 depends on >= only)."""
    host, inventory = world
    # dpkg's locks held as it starts: `apt-mark unhold` (dpkg --set-selections) waits too
    hold_apt_locks(host, DPKG_LOCKS, seconds=30)
    assert "locked by another process" in host.ssh("apt-mark hold dash 2>&1", check=False).stdout
    to_590 = run_pyinfra(inventory, DEPLOY, "--data", "nvidia_driver_branch=590")
    assert to_590.returncode == 0, describe_failure(to_590)
    assert to_590.seconds >= 25, f"converged in {to_590.seconds:.1f} s while dpkg was locked"
    assert_stack(
        host,
        "590.48.01",
        {"nvidia-driver-pinning-590.48.01": "590.48.01-1", "nvidia-open": "590.48.01-1"},
    )
    assert "nvidia-open-580" not in held_versions(host)
    assert upgrades_offered(host) == []
    volta = run_pyinfra(inventory, DEPLOY, "--data", "nvidia_driver_flavour=proprietary")
    assert volta.returncode == 0, describe_failure(volta)
    assert_stack(host, "580.95.05", {"cuda-drivers-580": "580.95.05-1"})
    installed = held_versions(host)
    assert "nvidia-kernel-dkms" in installed and "nvidia-kernel-open-dkms" not in installed
    assert not any(n.startswith(("nvidia-open", "nvidia-driver-pinning")) for n in installed)
    assert upgrades_offered(host) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["serve_port=70000", "serve_mode=podman", "model_revision="],
         ["serve_port = 70000", "serve_mode = 'podman'", "model_revision = ''"]),
        (["nvidia_repo_key_fingerprint=" + "A" * 40],
         ["A" * 40, "nothing was trusted or written"]),
        (["nvidia_driver_branch=550", "cuda_version=12.8"], ["cuda_version=12.8 needs"]),
        (["nvidia_require_gpu=true"], ["no NVIDIA GPU found"]),
        (["preflight_min_disk_gib=1000000"],
         ["preflight_min_disk_gib is 1000000", "GiB free at /"]),
    ],
)  # fmt: skip
def test_refusals_name_the_problem_and_change_nothing(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    nvidia_repo: NvidiaRepoStandin,
    tmp_path: Path,
    data: list[str],
    expected: list[str],
) -> None:
    from autoglm_testbed.hosts import write_inventory

    (host,) = sandbox_hosts(1)
    inventory = tmp_path / "inventory.py"
    write_inventory(inventory, [host], {}, sandbox_group_data(nvidia_repo))
    extra = [arg for item in data for arg in ("--data", item)]
    result = run_pyinfra(inventory, DEPLOY, *extra)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert nothing_written(host)
    assert held_versions(host) == {}


def test_gpu_check_is_read_only_and_honest_without_a_gpu(
    world: tuple[SandboxHost, Path], tmp_path: Path
) -> None:
    host, inventory = world
    run_pyinfra(inventory, DEPLOY)  # converged, whatever ran before
    before = host.ssh("find /etc /var/lib/autoglm -newer /etc/hostname | sort; apt-mark showhold")
    result = run_pyinfra(
        inventory, "deploys/gpu_check.py", env={"AUTOGLM_CHECKS_JSON": str(tmp_path)}
    )
    assert result.returncode != 0, "a host without a GPU must not pass GPU acceptance"
    assert result.changed() == [] and result.operations == []
    assert "gpu present" in result.stderr and "no PCI display device" in result.stderr
    report = json.loads((tmp_path / f"{host.name}.gpu_check.json").read_text())
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["packages"] == "ok", report  # the converged stack is pinned and held
    assert statuses["gpu present"] == "fail" and statuses["nvidia-smi"] == "skip"
    after = host.ssh("find /etc /var/lib/autoglm -newer /etc/hostname | sort; apt-mark showhold")
    assert after.stdout == before.stdout
