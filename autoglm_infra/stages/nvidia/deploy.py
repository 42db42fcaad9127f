"""Stage 3 - NVIDIA: trusted repository, driver + CUDA + cuDNN at pinned versions, held.

Runs alone with `pyinfra INVENTORY deploys/nvidia.py`. The plan comes from the pure stack
resolver; this file only turns it into operations against one snapshot of the host.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.operations import server

from autoglm_infra.common.key_trust import fetch_trusted_keyring
from autoglm_infra.pyinfra_ext.operations import (
    SnapshotFact,
    apt_changes,
    apt_pinned,
    put_file,
    put_managed_files,
)
from autoglm_infra.pyinfra_ext.settings import host_gpu_probe
from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stack.adopt import host_plan
from autoglm_infra.stack.facts_table import PINNING_PACKAGE_PREFIX
from autoglm_infra.stack.installed import installed_stack
from autoglm_infra.stages.nvidia import files as nf
from autoglm_infra.stages.nvidia.apt_check import Expectation, stale_closure
from autoglm_infra.stages.nvidia.ops import (
    PERSISTENCED_ENABLED,
    driver_reboot,
    kernel_headers,
    nvidia_apt_check,
    persistence_mode,
    verify_driver,
)


@stage("NVIDIA", 3)
def nvidia(run: StageRun) -> None:
    settings = run.settings
    profile = run.profile
    found = host_gpu_probe()
    try:
        on_host = installed_stack(found)
        decided = host_plan(settings, profile, on_host)
        plan = decided.plan
        keyring = fetch_trusted_keyring(
            plan.repo_url + nf.key_file_name(settings.nvidia_repo_key_fingerprint),
            settings.nvidia_repo_key_fingerprint,
            "nvidia_repo_key_fingerprint",
        )
    except ValueError as exc:  # StackError / KeyTrustError: user-facing, no traceback
        raise StageRefused(str(exc)) from None
    if decided.refusal:  # a driver no package manager owns: stop before any change
        raise StageRefused(f"{decided.refusal}")
    for note in plan.notes:
        logger.info(f"{host.print_prefix}stack: {note}")
    for warning in plan.warnings:  # an ended driver branch, a known defect of the torch build
        logger.warning(f"{host.print_prefix}stack: WARNING: {warning}")
    for part in decided.components:
        logger.info(f"{host.print_prefix}{part.name}: {part.action}: {part.why}")

    files = nf.stage_files(plan.repo_url, keyring)
    # The pin covers what the stage manages; a host's own kept toolkit or cuDNN is not moved.
    closure_pin = nf.closure_preferences(
        decided.pin_driver_version, decided.pin_cuda_packages, decided.pin_cudnn_version
    )
    snapshot = read_state(
        SnapshotFact,
        files=[f.path for f in files]
        + [nf.CLOSURE_PIN, nf.HELD_STATE, nf.REBOOT_REQUIRED, PERSISTENCED_ENABLED],
        package_patterns=list(nf.PACKAGE_PATTERNS),
        read_text=[nf.HELD_STATE],
        commands=["update-initramfs"],
    )
    changed = put_managed_files(files, snapshot.files, "NVIDIA")

    held_state = snapshot.files.get(nf.HELD_STATE)
    previously_held = held_state.text.split() if held_state and held_state.text else []
    packages = decided.packages
    # NVIDIA's version-locking package goes in first, in its own transaction.
    locking = [p for p in packages if p[0].startswith(PINNING_PACKAGE_PREFIX)]
    installed = {name: state.version for name, state in snapshot.packages.items()}
    to_install, _ = apt_changes(packages, snapshot.packages)
    to_remove = [n for n in previously_held if n in installed and n not in dict(packages)]
    # Driver/cuDNN packages left at another release by an earlier plan move with this one.
    # (a package the host itself holds is never moved behind the user's back)
    stale = stale_closure(
        installed,
        decided.moving_driver_version,
        decided.pin_cudnn_version,
        [*dict(packages), *to_remove, *on_host.held],
    )
    nvidia_apt_check(
        name="NVIDIA: apt lands exactly the planned versions (asked before installing)",
        expect=Expectation(
            tuple(packages),
            decided.pin_driver_version,
            decided.pin_cudnn_version,
            plan.repo_url,
            driver_moves=bool(decided.moving_driver_version),
        ),
        installed=installed,
        install_args=[*to_install, *(f"{n}-" for n in to_remove)],
        refresh=stale,
        prefs_name=nf.CLOSURE_PIN.rsplit("/", 1)[1],
        prefs_text=closure_pin,
        needed=bool(to_install or to_remove or stale),
        repo_pending=changed[nf.SOURCE].will_change or changed[nf.KEYRING].will_change,
    )
    put_file(
        name=f"NVIDIA: {nf.CLOSURE_PIN} (the planned release of every NVIDIA package)",
        path=nf.CLOSURE_PIN,
        content=closure_pin.encode(),
        current=snapshot.files.get(nf.CLOSURE_PIN),
    )
    apt_pinned(
        name="NVIDIA: driver, CUDA and cuDNN at pinned versions, held",
        first=locking,
        packages=[p for p in packages if p not in locking],
        installed=snapshot.packages,
        remove=previously_held,
        state_file=nf.HELD_STATE,
        refresh=stale,
        update=False,  # nvidia_apt_check ran it for this change
    )
    # On a host without dkms and with nothing to install, asking would be a command per no-op.
    if profile.kernel_headers or profile.dkms or to_install or stale:
        kernel_headers(
            name=f"NVIDIA: headers of the running kernel {profile.kernel} (DKMS builds for it)",
            kernel=profile.kernel,
            present=profile.kernel_headers,
        )

    if snapshot.commands.get("update-initramfs"):
        server.shell(
            name="NVIDIA: rebuild initramfs (nouveau blacklist changed)",
            # every installed kernel's: `-u` alone rebuilds only the newest, which need not
            # be the one that boots next
            commands=["update-initramfs -u -k all"],
            _if=changed[nf.NOUVEAU_BLACKLIST].did_change,
        )

    persistence_mode(
        name="NVIDIA: persistence mode",
        gpu_present=bool(profile.gpus),
        enabled=snapshot.files.get(PERSISTENCED_ENABLED),
        already_on=bool(found.gpus) and all(g.persistence == "Enabled" for g in found.gpus),
    )
    driver_reboot(
        name="NVIDIA: reboot when the running kernel needs it for the driver",
        policy=settings.nvidia_reboot,
        driver_version=plan.driver_version,
        gpu_present=bool(profile.gpus),
        loaded_version=profile.nvidia_module_version,
        marker=nf.REBOOT_REQUIRED,
        current_marker=snapshot.files.get(nf.REBOOT_REQUIRED),
        nouveau_loaded=profile.nouveau_loaded,
    )
    verify_driver(
        name="NVIDIA: verify driver with nvidia-smi",
        driver_version=plan.driver_version,
        cuda_version=plan.cuda_version,
        gpu_present=bool(profile.gpus),
    )
