"""Operations of the NVIDIA stage that need the host's state after installing."""

from __future__ import annotations

import shlex
from collections.abc import Generator, Mapping, Sequence
from hashlib import sha256
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.facts.server import Command
from pyinfra.operations import server

from autoglm_infra.common.snapshot import FileState
from autoglm_infra.pyinfra_ext.operations import APT_ENV, APT_OPTS, fail_host
from autoglm_infra.pyinfra_ext.preview import previewing
from autoglm_infra.stages.nvidia.apt_check import Expectation, check_script, judge

NO_GPU = "no NVIDIA GPU: driver not loaded"
REBOOT_TIMEOUT_S = 600
PERSISTENCED_ENABLED = "/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"


def _loaded_module_version() -> str:
    out = host.get_fact(Command, "cat /sys/module/nvidia/version 2>/dev/null || true")
    return str(out or "").strip()


def bounded_reboot(timeout_s: int = REBOOT_TIMEOUT_S) -> Generator[Any, None, None]:
    """pyinfra's server.reboot, except that a host which does not come back fails the
    operation with one line saying so, not with pyinfra's traceback ("Unexpected error in
    Python callback": its wait raises a bare Exception)."""
    for command in server.reboot._inner(delay=10, interval=2, reboot_timeout=timeout_s):
        if (
            isinstance(command, FunctionCommand)
            and command.function.__name__ == "wait_and_reconnect"
        ):
            yield FunctionCommand(reported_wait(command.function, timeout_s), (), {})
        else:
            yield command


def reported_wait(wait: Any, timeout_s: int) -> Any:
    """`wait(state, host)`, with pyinfra's "did not reboot in time" turned into a failed
    command (False) and an error line naming the bound and where to look."""

    def wait_for_host(state: Any, host: Any) -> bool:
        try:
            wait(state, host)
        except Exception as exc:  # pyinfra raises a bare Exception for the timeout
            if "did not reboot in time" not in str(exc):
                raise
            host.log_styled(
                f"the host did not answer SSH within {timeout_s} s of the reboot: look at its "
                "console (a kernel or initramfs that does not boot, a network that did not come "
                "up), then converge again; nothing after the reboot ran",
                fg="red",
                log_func=logger.error,
            )
            return False
        return True

    return wait_for_host


def reboot_reasons(
    driver_version: str, gpu_present: bool, loaded_version: str, nouveau_loaded: bool
) -> list[str]:
    """Why the running kernel cannot have the planned driver without a reboot. Pure."""
    reasons = []
    if gpu_present and loaded_version != driver_version:
        reasons.append(f"installed driver {driver_version}, loaded {loaded_version or 'none'}")
    if nouveau_loaded:
        # the blacklist is read at boot; a nouveau that drives a GPU cannot be unloaded
        reasons.append("nouveau is loaded (blacklisted now; gone after a reboot)")
    return reasons


@operation()
def driver_reboot(
    policy: str,
    driver_version: str,
    gpu_present: bool,
    loaded_version: str,
    marker: str,
    current_marker: FileState | None,
    nouveau_loaded: bool = False,
) -> Generator[Any, None, None]:
    """Reboot only when the running kernel cannot have the planned driver otherwise, as
    `policy` allows: the loaded driver differs from the plan, or nouveau is loaded.

    `loaded_version` and `nouveau_loaded` come from the preflight host profile: only a
    reboot changes them, so they need no second read. With policy "never", writes `marker`
    (read by later stages and the doctor) and warns.

    + policy: nvidia_reboot: 'if-needed' reboots, 'never' writes `marker` and warns
    + driver_version: the planned driver
    + gpu_present: the host has an NVIDIA GPU
    + loaded_version: the loaded module's version ('' when none)
    + marker: reboot-required file
    + current_marker: its state from the snapshot
    + nouveau_loaded: nouveau is loaded in the running kernel

    **Example:**

    .. code:: python

        driver_reboot(name="reboot", policy="never", driver_version="580.95.05", gpu_present=True,
                      loaded_version=profile.nvidia_module_version, marker=MARKER,
                      current_marker=None, nouveau_loaded=profile.nouveau_loaded)
    """
    reasons = reboot_reasons(driver_version, gpu_present, loaded_version, nouveau_loaded)
    if not reasons:
        if current_marker is not None:
            yield StringCommand(f"rm -f {shlex.quote(marker)}")
        elif gpu_present:
            host.noop(f"loaded driver {loaded_version} matches the plan")
        else:
            host.noop(f"{NO_GPU}, no kernel module to reload: reboot not needed")
        return
    reason = "; ".join(reasons)
    if policy == "if-needed":
        logger.warning(f"{host.print_prefix}rebooting: {reason}")
        yield from bounded_reboot()
        return
    logger.warning(f"{host.print_prefix}REBOOT REQUIRED ({reason}); nvidia_reboot=never")
    text = f"driver: {reason}\n"
    if current_marker is not None and current_marker.sha256 == sha256(text.encode()).hexdigest():
        host.noop(f"{marker} already says so")
        return
    q = shlex.quote(marker)
    yield StringCommand(f"mkdir -p $(dirname {q}) && printf %s {shlex.quote(text)} > {q}")


def headers_package(kernel: str) -> str:
    """Debian's and Ubuntu's name for the headers of one kernel release."""
    return f"linux-headers-{kernel}"


@operation()
def kernel_headers(kernel: str, present: bool) -> Generator[Any, None, None]:
    """The running kernel's headers, where DKMS builds the driver's module: NVIDIA's repository
    packages are DKMS sources, and DKMS cannot build for a kernel without its headers. Their
    install runs DKMS for that kernel (also the fix after a kernel change).

    Read when it runs: the driver install just before it pulls in dkms.

    + kernel: the running kernel (`uname -r`)
    + present: /lib/modules/<kernel>/build exists (from the host profile)

    **Example:**

    .. code:: python

        kernel_headers(name="headers", kernel=profile.kernel, present=profile.kernel_headers)
    """
    if present:
        host.noop(f"headers of the running kernel {kernel} are installed")
        return
    package = shlex.quote(headers_package(kernel))
    found = str(
        host.get_fact(
            Command,
            "command -v dkms >/dev/null && echo dkms; "
            # no pkgcache.bin written: a read, also in a preview
            "apt-cache -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= show "
            f"--no-all-versions {package} >/dev/null 2>&1 && echo packaged; true",
        )
        or ""
    ).split()
    if "dkms" not in found:
        if previewing() or not state.is_executing:  # the driver may still bring dkms
            host.noop(f"preview: if the driver brings dkms, {headers_package(kernel)} follows")
        else:
            host.noop("no dkms on the host: the driver's module is not built here, no headers")
        return
    if "packaged" not in found:
        logger.warning(
            f"{host.print_prefix}WARNING: no package {headers_package(kernel)} in the host's apt "
            f"sources: DKMS cannot build the driver's module for the running kernel {kernel} "
            "(gpu_check names it). Fix: install that kernel's headers, or boot a kernel your "
            "distribution packages"
        )
        host.noop(f"no headers package for {kernel}")
        return
    k = shlex.quote(kernel)
    yield StringCommand(f"{APT_ENV} apt-get install {APT_OPTS} {package}")
    yield StringCommand(f"dkms autoinstall -k {k}")


@operation()
def verify_driver(
    driver_version: str, cuda_version: str, gpu_present: bool
) -> Generator[Any, None, None]:
    """nvidia-smi answers, reports the planned driver, and the module matches user space.

    + driver_version: the planned driver
    + cuda_version: the planned CUDA (reported)
    + gpu_present: False skips the check

    **Example:**

    .. code:: python

        verify_driver(name="verify", driver_version="580.95.05", cuda_version="13.0",
                      gpu_present=True)
    """
    yield from ()  # a check: it never runs commands of its own
    if not gpu_present:
        host.noop(f"{NO_GPU}: nvidia-smi check skipped")
        return
    smi = host.get_fact(
        Command, "nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 || true"
    )
    versions = {line.strip() for line in str(smi or "").splitlines() if line.strip()}
    if versions != {driver_version}:
        yield fail_host(f"nvidia-smi reports {sorted(versions)}, plan is {driver_version}")
        return
    loaded = _loaded_module_version()
    if loaded != driver_version:
        yield fail_host(f"kernel module {loaded} != user space {driver_version}: reboot the host")
        return
    host.noop(f"nvidia-smi: driver {driver_version}, module matches, CUDA {cuda_version}")


@operation()
def persistence_mode(
    gpu_present: bool, enabled: FileState | None, already_on: bool = False
) -> Generator[Any, None, None]:
    """Keep the driver initialised between CUDA clients (nvidia-persistenced), on GPU hosts.

    Started only while the module is loaded: after a fresh install it starts at the reboot.

    + gpu_present: False skips it (nvidia-persistenced needs a GPU)
    + enabled: the unit's multi-user.target.wants link from this stage's snapshot
    + already_on: nvidia-smi reports persistence mode on every GPU (a kept driver may have
      no nvidia-persistenced unit: its installer set the mode its own way)

    **Example:**

    .. code:: python

        persistence_mode(name="persistence", gpu_present=True,
                         enabled=snap.files.get(PERSISTENCED_ENABLED))
    """
    if not gpu_present:
        host.noop(f"{NO_GPU}: persistence mode skipped (nvidia-persistenced needs a GPU)")
        return
    if enabled is not None:
        host.noop("nvidia-persistenced is enabled")
        return
    if already_on:
        host.noop("persistence mode is on for every GPU (nvidia-smi)")
        return
    yield StringCommand(
        "systemctl enable nvidia-persistenced.service && "
        "{ [ ! -e /sys/module/nvidia ] || systemctl start nvidia-persistenced.service; }"
    )


@operation()
def nvidia_apt_check(
    expect: Expectation,
    installed: Mapping[str, str],
    install_args: Sequence[str],
    refresh: Sequence[str],
    prefs_name: str,
    prefs_text: str,
    needed: bool,
    repo_pending: bool = False,
) -> Generator[Any, None, None]:
    """Before any package changes, ask apt whether the plan lands exactly; stop if not.

    + expect: the planned packages, driver release and cuDNN
    + installed: name -> version from this stage's snapshot
    + install_args: the transaction about to run (name=version, name- to remove)
    + refresh: installed packages moved to their pinned candidate after it
    + prefs_name/prefs_text: the closure pin about to be written (simulated from a scratch
      copy of /etc/apt/preferences.d)
    + needed: False on a converged host, which then costs no command
    + repo_pending: this run writes the repository's source or key first

    In a preview (`--dry`, or the change detection before pyinfra asks to go on) apt works
    on a scratch copy of its lists and caches (the host keeps its own), and is not asked at
    all while the repository is still to be written; the run itself asks it again.

    **Example:**

    .. code:: python

        nvidia_apt_check(name="apt check", expect=expect, installed=installed, install_args=args,
                         refresh=[], prefs_name=name, prefs_text=text, needed=bool(args))
    """
    yield from ()  # a check: it never changes the host
    if not needed:
        host.noop("NVIDIA packages at their planned versions: apt not asked")
        return
    # a --dry run, or pyinfra's change detection before it asks to go on (no -y): nothing
    # has been written yet, and the user may still say no
    preview = previewing() or not state.is_executing
    if preview and repo_pending:
        host.noop(
            "preview: the NVIDIA repository is not configured on the host yet, so apt "
            "cannot be asked; the converge asks it before installing anything"
        )
        return
    names = [*(name for name, _ in expect.packages), *refresh]
    script = check_script(names, install_args, prefs_name, prefs_text, preview)
    output = host.get_fact(Command, script)
    problem = judge(expect, installed, str(output or ""), refresh)
    if problem:
        yield fail_host(f"NVIDIA stage stopped before installing: {problem}")
        return
    host.noop(f"apt lands every NVIDIA package at the plan (driver {expect.driver_version})")
