"""What a host already has, read from the recorded real H200 outputs (tests/fixtures/
recorded, verbatim), and what the NVIDIA stage decides for it (issue 24)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from autoglm_infra.common.host_profile import HostProfile, PciGpu
from autoglm_infra.config.schema import Settings
from autoglm_infra.stack.adopt import KEEP, REFUSE, UPGRADE, host_plan
from autoglm_infra.stack.installed import (
    DPKG,
    RUNFILE,
    UNKNOWN,
    InstalledStack,
    installed_stack,
    nvrm_flavour,
)
from autoglm_infra.stages.nvidia import files as nf
from autoglm_infra.stages.nvidia.apt_check import stale_closure
from autoglm_infra.stages.nvidia.files import closure_preferences
from autoglm_infra.stages.nvidia.gpu_checks import CUDA_VERSION_SED, SMI_QUERY, parse_gpu_probe

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"
H200_PROBE = (RECORDED / "h200-gpu-probe.txt").read_text().splitlines()
# The recorded host as the host probe reads it (real-gpu-host-h200.md: Ubuntu 24.04,
# PCI 0000:00:06.0 device 0x2335 class 0x030200, no /sys/firmware/efi).
H200_HOST = HostProfile(
    os_id="ubuntu", os_version="24.04", arch="x86_64", cpus=16, efi=False,
    gpus=(PciGpu("0000:00:06.0", "0x2335", "0x030200"),), nvidia_module_version="580.159.04",
)  # fmt: skip
# The report's quote of that host's /proc/driver/nvidia/version.
H200_NVRM = "NVIDIA UNIX Open Kernel Module for x86_64 580.159.04"
# Public real NVRM lines (preinstalled-drivers.md §3: nixGL #186, illinois-scicomp #70).
OPEN_565 = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  565.57.01  Release Build  "
    "(dvs-builder@U16-A24-9-2)  Thu Oct 10 12:15:00 UTC 2024"
)
PROPRIETARY_520 = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  520.56.06  Thu Oct  6 21:38:55 UTC 2022"
)


def h200() -> tuple[list[str], Settings]:
    return H200_PROBE, Settings()


def test_recorded_probe_parses_into_the_hosts_real_facts() -> None:
    probe = parse_gpu_probe(H200_PROBE)
    assert probe.read and probe.smi_installed and probe.uvm_loaded
    assert [(g.name, g.driver_version, g.persistence, g.memory_mib) for g in probe.gpus] == [
        ("NVIDIA H200", "580.159.04", "Enabled", 143771)
    ]
    assert (probe.cuda_supported, probe.module_version) == ("13.0", "580.159.04")
    found = installed_stack(probe)
    assert found.driver_version == "580.159.04" and found.driver_healthy
    assert found.owner == UNKNOWN and "no nvidia-* driver package" in found.owner_detail
    assert found.cuda_toolkits == (("13.0", "cuda-cudart-13-0 13.0.96-1"),)
    assert found.cudnn == (("13", "9.14.0.64-1", "libcudnn9-cuda-13"),)
    assert found.held == {
        "libcublas-13-0", "libcublas-dev-13-0", "libcudnn9-cuda-13", "libnccl-dev", "libnccl2"
    }  # fmt: skip


# From R610 on the banner reads "KMD Version:" / "CUDA UMD Version:". No R610+ output is
# recorded here: this banner line is the one a public install note shows for driver
# 610.57.04 on Ubuntu (2026-09-30, "| NVIDIA-SMI 610.57.04  KMD Version: 610.57.04  CUDA UMD
# Version: 13.3 |", same column layout as the recorded 580 banner); the rest of the sample
# is the recorded H200 output. A constructed sample, not a recording.
R610_BANNER = (
    "| NVIDIA-SMI 610.57.04              KMD Version: 610.57.04     CUDA UMD Version: 13.3     |"
)


def sed_cuda(text: str, sed: list[str]) -> list[str]:
    """The probe's own sed expression over an nvidia-smi output."""
    out = subprocess.run(
        [*sed, "-n", CUDA_VERSION_SED], input=text, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def seds() -> list[list[str]]:
    """GNU sed, and busybox's where installed (the expression is POSIX BRE)."""
    found = [["sed"]]
    if shutil.which("busybox"):
        found.append(["busybox", "sed"])
    return found


def test_recorded_nvidia_smi_gives_the_cuda_version_the_probe_reads() -> None:
    """The probe's own sed over the recorded plain nvidia-smi output (R580: CUDA Version)."""
    recorded = (RECORDED / "h200-nvidia-smi.txt").read_text()
    for sed in seds():
        assert sed_cuda(recorded, sed) == ["cuda=13.0"], sed
    assert (
        "Driver Version                                         : 580.159.04"
        in (RECORDED / "h200-nvidia-smi-q.txt").read_text()
    )


def test_r610_banner_with_cuda_umd_version_is_read_too() -> None:
    recorded = (RECORDED / "h200-nvidia-smi.txt").read_text().splitlines(keepends=True)
    banner = next(i for i, line in enumerate(recorded) if "CUDA Version:" in line)
    assert len(recorded[banner].rstrip("\n")) == len(R610_BANNER)  # same table width
    constructed = "".join([*recorded[:banner], R610_BANNER + "\n", *recorded[banner + 1 :]])
    for sed in seds():
        assert sed_cuda(constructed, sed) == ["cuda=13.3"], sed
    # the driver's version is read from --query-gpu, not the banner: no other probe change
    assert "driver_version" in SMI_QUERY


def test_nvrm_line_gives_version_and_flavour() -> None:
    assert nvrm_flavour(H200_NVRM) == ("580.159.04", "open")
    assert nvrm_flavour(OPEN_565) == ("565.57.01", "open")
    assert nvrm_flavour(PROPRIETARY_520) == ("520.56.06", "proprietary")
    assert nvrm_flavour("") == ("", "")


def test_owner_dpkg_runfile_or_unknown() -> None:
    dpkg = parse_gpu_probe(
        [*H200_PROBE, "smi_owner=nvidia-utils-580", "pkg=nvidia-utils-580 580.1"]
    )
    assert installed_stack(dpkg).owner == DPKG
    runfile = parse_gpu_probe([*H200_PROBE, "uninstaller=/usr/bin/nvidia-uninstall"])
    found = installed_stack(runfile)
    assert found.owner == RUNFILE and "/usr/bin/nvidia-uninstall" in found.owner_detail
    assert installed_stack(parse_gpu_probe(["probe=gpu"])).driver_version == ""


def test_recorded_host_is_adopted_nothing_stacked_or_downgraded() -> None:
    found = installed_stack(parse_gpu_probe([*H200_PROBE, f"nvrm={H200_NVRM}"]))
    decided = host_plan(Settings(), H200_HOST, found)
    actions = {c.name: c.action for c in decided.components}
    assert actions == {"driver": KEEP, "CUDA": KEEP, "cuDNN": KEEP}, decided.components
    assert decided.packages == [] and decided.refusal == ""
    plan = decided.plan
    assert (plan.driver_version, plan.cuda_version, plan.torch_flavour) == (
        "580.159.04", "13.0", "cu130"
    )  # fmt: skip
    assert plan.driver_packages == ()
    driver = decided.components[0].why
    assert "open kernel module" in driver and "installed outside apt" in driver


def test_manage_on_a_driver_no_package_manager_owns_refuses_with_the_fix() -> None:
    found = installed_stack(parse_gpu_probe([*H200_PROBE, "uninstaller=/usr/bin/nvidia-uninstall"]))
    decided = host_plan(Settings(nvidia_driver_policy="manage"), H200_HOST, found)
    assert decided.components[0].action == REFUSE
    assert (
        "nvidia-uninstall" in decided.refusal and "nvidia_driver_policy: adopt" in decided.refusal
    )
    assert "580.159.04" in decided.refusal and "Nothing was changed" in decided.refusal


def test_a_newer_point_release_from_apt_is_never_downgraded() -> None:
    lines = [*H200_PROBE, "smi_owner=nvidia-driver-580-open",
             "pkg=nvidia-driver-580-open 580.159.04-0ubuntu1"]  # fmt: skip
    decided = host_plan(
        Settings(nvidia_driver_policy="manage"), H200_HOST, installed_stack(parse_gpu_probe(lines))
    )
    driver = decided.components[0]
    assert driver.action == KEEP and "never downgraded" in driver.why and not driver.packages
    assert decided.refusal == ""
    # what stays is what the plan (driver_reboot, verify, gpu_check) compares with
    assert decided.plan.driver_version == "580.159.04" and decided.plan.driver_packages == ()


def test_holds_of_the_host_are_respected_and_reported() -> None:
    """An older driver apt owns, whose planned packages the host holds: refused, not unheld."""
    lines = [
        ln.replace("580.159.04", "570.172.08") for ln in H200_PROBE if not ln.startswith("cuda=")
    ]
    bare = installed_stack(parse_gpu_probe(["probe=gpu"]))
    meta = host_plan(Settings(), H200_HOST, bare).plan.driver_packages[-1].name  # nvidia-open-580
    lines += ["cuda=12.8", f"smi_owner={meta}", f"pkg={meta} 570.0-1", f"held={meta}"]
    found = installed_stack(parse_gpu_probe(lines))
    found = replace(found, driver_healthy=False)  # not adoptable: the plan wants 580
    decided = host_plan(Settings(), H200_HOST, found)
    driver = decided.components[0]
    assert driver.action == REFUSE and f"apt-mark unhold {meta}" in driver.why
    assert UPGRADE in driver.why and decided.packages == []


def _driver_host(version: str, cuda: str) -> list[str]:
    """A probe of a host running `version` from a vendor image (outside apt), no toolkit."""
    return [
        "probe=gpu", "smi=installed",
        f"gpu=0, 00000000:00:06.0, NVIDIA H200, {version}, Enabled, 143771",
        f"cuda={cuda}", f"module={version}", "uvm=loaded",
    ]  # fmt: skip


def test_current_branches_595_to_620_are_known_and_adopted() -> None:
    for version, cuda in (
        ("595.71.05", "13.2"),
        ("610.57.04", "13.3"),
        ("615.71.09", "13.4"),
        ("620.70.06", "13.2"),
    ):
        found = installed_stack(parse_gpu_probe(_driver_host(version, cuda)))
        decided = host_plan(Settings(), H200_HOST, found)
        assert decided.components[0].action == KEEP, decided.components[0]
        # the newest CUDA at or below the driver's own that has an engine wheel
        assert (decided.plan.driver_version, decided.plan.cuda_version) == (version, "13.0")
        assert decided.plan.driver_packages == () and decided.refusal == ""


def test_a_driver_branch_the_table_does_not_know_is_not_stacked_over() -> None:
    found = installed_stack(parse_gpu_probe(_driver_host("600.12.04", "13.2")))  # no such branch
    decided = host_plan(Settings(), H200_HOST, found)
    assert decided.components[0].action == REFUSE
    assert not [n for n, _ in decided.packages if n.startswith(("nvidia-", "cuda-drivers"))]
    assert "cannot be kept" in decided.refusal and "nvidia-uninstall" in decided.refusal


def test_a_driver_of_another_flavour_than_configured_is_not_adopted() -> None:
    found = installed_stack(parse_gpu_probe([*H200_PROBE, f"nvrm={H200_NVRM}"]))
    decided = host_plan(Settings(nvidia_driver_flavour="proprietary"), H200_HOST, found)
    assert decided.components[0].action == REFUSE
    assert "nvidia_driver_flavour=proprietary, the loaded module is open" in decided.refusal


def test_planned_driver_packages_installed_but_not_loaded_are_kept_as_planned() -> None:
    """A GPU-less host (the sandbox) after a converge: packages there, no nvidia-smi."""
    plan = host_plan(Settings(), H200_HOST, installed_stack(parse_gpu_probe(["probe=gpu"]))).plan
    lines = ["probe=gpu", *(f"pkg={p.name} {p.version}" for p in plan.driver_packages)]
    decided = host_plan(Settings(), H200_HOST, installed_stack(parse_gpu_probe(lines)))
    driver = decided.components[0]
    assert driver.action == KEEP and driver.packages == plan.driver_packages
    assert decided.plan.driver_version == plan.driver_version


def test_a_pinned_older_release_says_it_downgrades() -> None:
    """Only an exact nvidia_driver_version may replace a newer point release, and says so."""
    lines = [*H200_PROBE, "smi_owner=nvidia-driver-580-open",
             "pkg=nvidia-driver-580-open 580.159.04-0ubuntu1"]  # fmt: skip
    settings = Settings(nvidia_driver_policy="manage", nvidia_driver_version="580.126.09")
    decided = host_plan(settings, H200_HOST, installed_stack(parse_gpu_probe(lines)))
    driver = decided.components[0]
    assert driver.action == UPGRADE and driver.packages
    assert driver.why.startswith("DOWNGRADE driver 580.159.04")
    assert "nvidia_driver_version=580.126.09 pins that release" in driver.why
    assert decided.plan.driver_version == "580.126.09"
    # adopt does not keep a driver the user pinned away from either
    adopt = host_plan(
        Settings(nvidia_driver_version="580.126.09"),
        H200_HOST,
        installed_stack(parse_gpu_probe(lines)),
    )
    assert adopt.components[0].action == UPGRADE


def test_the_closure_pin_leaves_the_hosts_own_toolkit_and_cudnn_alone() -> None:
    """On the recorded host (cuDNN 9.14 held, CUDA 13.0 kept) the pin names only the kept
    driver's release: no stanza would move the host's own cuDNN or toolkit, and nothing is
    stale."""
    found = installed_stack(parse_gpu_probe([*H200_PROBE, f"nvrm={H200_NVRM}"]))
    decided = host_plan(Settings(), H200_HOST, found)
    assert decided.pin_driver_version == "580.159.04"
    assert decided.pin_cuda_packages == [] and decided.pin_cudnn_version == ""
    assert decided.moving_driver_version == ""
    pin = closure_preferences(
        decided.pin_driver_version, decided.pin_cuda_packages, decided.pin_cudnn_version
    )
    assert "cudnn" not in pin and "Pin: version 580.159.04-*" in pin
    installed = dict(line.split()[0:2] for line in found_packages(found))
    assert stale_closure(installed, decided.moving_driver_version,
                         decided.pin_cudnn_version, []) == []  # fmt: skip


def found_packages(found: InstalledStack) -> list[str]:
    return [f"{name} {version}" for name, version in found.packages.items()]


def test_the_stages_own_holds_are_not_the_hosts() -> None:
    """A converged host holds the planned packages itself (recorded in its state file):
    those are not the user's holds that would make a component "refuse"."""
    lines = [*H200_PROBE, "held=nvidia-open-580", "own_held=nvidia-open-580"]
    found = installed_stack(parse_gpu_probe(lines))
    assert "nvidia-open-580" not in found.held and "libcudnn9-cuda-13" in found.held
    assert "nvidia-open-580" in parse_gpu_probe(lines).held  # gpu_check's "held" row sees all


def test_a_kept_driver_keeps_the_packages_the_stage_installed_and_holds() -> None:
    """After the first converge and its reboot, the planned driver is loaded: adopting it
    must keep (and hold) the stage's own driver packages, never remove them as the previous
    plan's, so the second converge changes nothing."""
    bare = installed_stack(parse_gpu_probe(["probe=gpu"]))
    planned = host_plan(Settings(), H200_HOST, bare).plan
    version = planned.driver_version
    lines = [ln for ln in _driver_host(version, "13.0")]
    lines += [f"smi_owner={planned.driver_packages[-1].name}"]
    for p in planned.driver_packages:
        lines += [f"pkg={p.name} {p.version}", f"held={p.name}", f"own_held={p.name}"]
    decided = host_plan(Settings(), H200_HOST, installed_stack(parse_gpu_probe(lines)))
    driver = decided.components[0]
    assert driver.action == KEEP, driver
    assert [(p.name, p.version) for p in driver.packages] == [
        (p.name, p.version) for p in planned.driver_packages
    ]
    assert all(p in decided.packages for p in [(p.name, p.version) for p in driver.packages])


def test_a_component_the_hosts_hold_refuses_stops_the_whole_stage() -> None:
    bare = installed_stack(parse_gpu_probe(["probe=gpu"]))
    meta = host_plan(Settings(), H200_HOST, bare).plan.driver_packages[-1].name
    lines = [*_driver_host("570.172.08", "12.8"), f"smi_owner={meta}", f"pkg={meta} 570.0-1",
             f"held={meta}"]  # fmt: skip
    found = replace(installed_stack(parse_gpu_probe(lines)), driver_healthy=False)
    decided = host_plan(Settings(), H200_HOST, found)
    assert decided.components[0].action == REFUSE
    assert f"apt-mark unhold {meta}" in decided.refusal
    assert decided.refusal.endswith("Nothing was changed.")


def test_the_snapshot_lists_every_driver_binary_the_closure_pin_names() -> None:
    """A driver package the snapshot cannot see is never moved with the driver."""
    alternatives = nf.DRIVER_PACKAGES_REGEX.strip("/").removeprefix("^(").removesuffix(")")
    for prefix in alternatives.split("|"):
        example = f"{prefix}example"
        assert re.match(nf.DRIVER_PACKAGES_REGEX.strip("/"), example)
        assert any(fnmatch.fnmatchcase(example, p) for p in nf.PACKAGE_PATTERNS), prefix


def test_cudnn_8_is_recognised_by_its_one_package_name() -> None:
    """cuDNN 8 came as libcudnn8 with the CUDA build in its version; it is the host's cuDNN
    as much as libcudnn9-cuda-12 is (the stage keeps it rather than stacking a second)."""
    probe = parse_gpu_probe(H200_PROBE)
    cudnn8 = "8.9.7.29-1+cuda12.2"
    packages = {**probe.packages, "libcudnn8": cudnn8, "libcudnn8-dev": cudnn8}
    found = installed_stack(replace(probe, packages=packages))
    assert ("12", "8.9.7.29-1+cuda12.2", "libcudnn8") in found.cudnn
    assert not any(pkg == "libcudnn8-dev" for _, _, pkg in found.cudnn)
