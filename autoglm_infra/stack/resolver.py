"""Pure stack resolver: which driver, CUDA toolkit, cuDNN and torch wheel a host gets.

Every number comes from the compatibility table (stack/nvidia_stack.yaml); this module
only applies the rules. Impossible combinations raise :class:`StackError` with a message
that names the configuration keys, the numbers and the fix, for example::

    cuda_version=12.8 needs NVIDIA driver >= 570.124.06, but nvidia_driver_branch=550
    (550.90.07) is too old: use nvidia_driver_branch=570 or newer, or cuda_version <= 12.4

Example::

    plan = resolve_stack(StackRequest(
        os=OsInfo("debian", "12", "x86_64"),
        gpus=(GpuDevice("0x10de", "0x2330"),),
    ))
    plan.driver_branch, plan.driver_flavour, plan.torch_flavour   # 580, 'open', 'cu128'

Never imports pyinfra: deploy code turns the plan into operations.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from autoglm_infra.stack.facts_table import (
    PINNING_PACKAGE_PREFIX,
    CudaToolkit,
    Cudnn,
    CudnnBuild,
    DriverBranch,
    Engine,
    EngineFlavour,
    FamilyPackages,
    FlavourPackages,
    OsTarget,
    PackagePin,
    StackTable,
    TorchFlavour,
    TorchRelease,
    default_stack_table,
    parse_version,
)
from autoglm_infra.stack.gpus import GpuDevice, GpuInfo, identify_gpu, is_nvidia

# Configuration keys named in error messages (group_data keys of the nvidia stage).
KEY_OS = "os"
KEY_GPUS = "gpus"
KEY_BRANCH = "nvidia_driver_branch"
KEY_VERSION = "nvidia_driver_version"
KEY_FLAVOUR = "nvidia_driver_flavour"
KEY_CUDA = "cuda_version"
KEY_CUDNN = "cudnn_version"
KEY_ENGINE = "engine"
KEY_ENGINE_VERSION = "serve_engine_version"
KEY_REPO = "nvidia_repo_base_url"

AUTO = "auto"
NONE = "none"
OPEN = "open"
PROPRIETARY = "proprietary"
DEFAULT_REPO_BASE_URL = "https://developer.download.nvidia.com/compute/cuda/repos"

_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class StackError(ValueError):
    """An impossible or unknown request; the message names the keys, numbers and the fix."""

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys: tuple[str, ...] = tuple(keys)


@dataclass(frozen=True)
class OsInfo:
    distro: str  # "ubuntu" | "debian"
    version: str  # "22.04" | "24.04" | "12"
    arch: str  # "x86_64" | "aarch64" (amd64/arm64 accepted)


@dataclass(frozen=True)
class StackRequest:
    os: OsInfo
    gpus: tuple[GpuDevice, ...] = ()  # empty: GPU-less host (sandbox), packages still resolve
    driver_branch: str = AUTO  # "auto" or e.g. "580"
    driver_version: str = AUTO  # "auto" (the branch's pinned release) or e.g. "580.126.09"
    driver_flavour: str = AUTO  # "auto" | "open" | "proprietary"
    cuda_version: str = AUTO  # "auto" or e.g. "12.8"
    cudnn_version: str = AUTO  # "auto" | "none" | "9" | "9.10"
    engine: str = "vllm"
    engine_version: str = AUTO  # "auto" (newest default_candidate release that fits) or "0.33.0"
    repo_base_url: str = DEFAULT_REPO_BASE_URL
    # A healthy driver already loaded on the host and kept (see stack_adopt): the plan is
    # resolved against its exact version and installs no driver package.
    adopted_driver: str = ""
    # CUDA versions to prefer when cuda_version is auto (the host's toolkits, the driver's
    # own CUDA), best first: a fitting wheel of one of these wins over the engine default.
    prefer_cuda: tuple[str, ...] = ()
    # The day end-of-life dates are compared with (None: today).
    today: datetime.date | None = None


@dataclass(frozen=True)
class AptPackage:
    name: str
    version: str  # exact Debian version to pin

    @property
    def spec(self) -> str:
        """apt-get argument: 'cuda-drivers-580=580.95.05-0ubuntu1'."""
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class StackPlan:
    repo_url: str  # <base>/<distro><ver>/<x86_64|sbsa>/
    driver_branch: int
    driver_version: str  # exact driver release of the branch, e.g. "580.95.05"
    driver_flavour: str  # "open" | "proprietary"
    driver_packages: tuple[AptPackage, ...]  # install in this order (pinning package first)
    cuda_version: str
    cuda_packages: tuple[AptPackage, ...]
    cudnn_version: str  # "" when no cuDNN
    cudnn_packages: tuple[AptPackage, ...]
    torch_flavour: str  # "cu126" | "cu128" | "cu129" | "cu130" ...
    engine: str
    engine_version: str
    torch_version: str
    hold_packages: tuple[str, ...]  # apt-mark hold: unattended upgrades must not swap these
    notes: tuple[str, ...]  # why each auto choice was made, and any unverified facts used
    lock_profile: str = (
        ""  # autoglm_infra/locks profile of the engine flavour ("" when none exists)
    )
    docker_image: str = ""  # the engine release's image tag for docker mode
    pip_cudnn: str = ""  # the cuDNN wheel the torch wheel pins ("" when not recorded)
    # Ended driver branches and known defects of the chosen torch build, each with its fix.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Wheel:
    """One usable (engine flavour, torch flavour, CUDA toolkit) combination."""

    engine_flavour: EngineFlavour
    torch_flavour: TorchFlavour
    cuda: CudaToolkit

    @property
    def name(self) -> str:
        return self.torch_flavour.name


# ---------------------------------------------------------------------------------------
# entry point


def resolve_stack(request: StackRequest, table: StackTable | None = None) -> StackPlan:
    """Resolve a host's NVIDIA stack; deterministic; raises StackError when impossible.

    With serve_engine_version=auto the engine's default-candidate releases are tried newest
    first and the first that fits the host wins (a note says why newer ones did not)."""
    if table is not None:
        return _resolve_stack(request, table)
    dated = replace(request, today=_day(request))
    try:
        hash(dated)
    except TypeError:  # a list where a tuple belongs: correct, only not cacheable
        return _resolve_stack(dated, default_stack_table())
    return _resolve_with_default_table(dated)  # a fleet's hosts mostly ask the same


def _day(request: StackRequest) -> datetime.date:
    return request.today or datetime.date.today()


@functools.lru_cache(maxsize=64)
def _resolve_with_default_table(request: StackRequest) -> StackPlan:
    return _resolve_stack(request, default_stack_table())


def _resolve_stack(request: StackRequest, facts: StackTable) -> StackPlan:
    releases = _engine_releases(request.engine, request.engine_version, facts)
    if len(releases) == 1 and request.engine_version.strip().lower() != AUTO:
        return _resolve(request, facts, releases[0])
    skipped: list[str] = []
    errors: list[StackError] = []
    for engine in releases:
        try:
            plan = _resolve(request, facts, engine)
        except StackError as exc:
            errors.append(exc)
            skipped.append(f"{engine.label}: {exc}")
            continue
        note = (
            f"{KEY_ENGINE_VERSION} auto -> {engine.version}: newest {engine.name} release "
            "marked default_candidate in the table that fits this host"
        )
        if skipped:
            note += " (" + "; ".join(skipped) + ")"
        return replace(plan, notes=(note, *plan.notes))
    if len({str(e) for e in errors}) == 1:
        raise errors[0]
    raise StackError(
        f"{KEY_ENGINE_VERSION}=auto: no {releases[0].name} release fits this host: "
        + "; ".join(skipped),
        sorted({k for e in errors for k in e.keys} | {KEY_ENGINE_VERSION}),
    )


def _resolve(request: StackRequest, facts: StackTable, engine: Engine) -> StackPlan:
    notes: list[str] = []
    warnings: list[str] = []

    target = _resolve_os(request.os, facts)
    repo_url = _repo_url(request.repo_base_url, target)
    gpus = _identify_gpus(request.gpus, facts, notes)
    torch_release = _engine_torch(engine, facts)
    branch_req = _apply_release(
        request.driver_version, _parse_branch(request.driver_branch, facts), facts, notes
    )
    flavour_req = _parse_flavour(request.driver_flavour)
    cuda_req = _parse_cuda(request.cuda_version, facts)
    cudnn_req = _parse_cudnn(request.cudnn_version, facts)

    if branch_req is not None:
        _check_branch_on_os(branch_req, target, facts)
        _check_branch_gpus(branch_req, gpus, facts)
    flavour = _resolve_flavour(flavour_req, gpus, notes)
    _check_engine_gpus(engine, gpus)
    if cuda_req is not None:
        _check_cuda_on_os(cuda_req, target, facts)

    wheels, rejected_wheels = _usable_wheels(engine, torch_release, facts, target, gpus, cuda_req)
    if branch_req is None:
        branch = _auto_branch(facts, target, gpus, wheels, cuda_req, engine, notes)
    else:
        branch = branch_req
        if cuda_req is not None:
            _check_driver_for_cuda(branch, cuda_req, facts, target)
    if request.adopted_driver:
        branch = branch.model_copy(update={"version": request.adopted_driver})
        notes.append(
            f"driver {request.adopted_driver} (branch {branch.branch}) is already loaded and "
            "kept: CUDA, cuDNN and the torch wheel are resolved against it"
        )
    preferred = (
        [w for c in request.prefer_cuda for w in wheels if w.cuda.version == c]
        if cuda_req is None
        else []
    )
    fitting = [
        w for w in preferred if parse_version(branch.version) >= parse_version(w.cuda.min_driver)
    ]
    if fitting:
        notes.append(
            f"{KEY_CUDA} auto -> {fitting[0].cuda.version}: the CUDA this host already has "
            f"or its driver reports ({', '.join(request.prefer_cuda)})"
        )
        wheels, cuda_req = [fitting[0]], fitting[0].cuda
    wheel = _choose_wheel(wheels, rejected_wheels, engine, torch_release, branch, cuda_req, notes)
    cudnn = _resolve_cudnn(cudnn_req, request.cudnn_version, wheel.cuda, gpus, facts, notes)

    family_packages = branch.packages.for_family(target.package_family)
    if family_packages is None:  # guarded by table validation; kept for a clear message
        raise StackError(f"the table has no {target.package_family} packages for {branch.branch}")
    driver_packages = tuple(
        AptPackage(pin.name, pin.version) for pin in family_packages.for_flavour(flavour)
    )
    if request.adopted_driver:
        driver_packages = ()
    elif driver_packages[0].name.startswith(PINNING_PACKAGE_PREFIX):
        notes.append(
            f"{driver_packages[0].name} (NVIDIA's version-locking package) is installed in its "
            "own apt transaction before the driver"
        )
    cuda_packages = (AptPackage(wheel.cuda.package, wheel.cuda.package_version),)
    cudnn_packages: tuple[AptPackage, ...] = ()
    cudnn_version = ""
    if cudnn is not None:
        release, build = cudnn
        cudnn_version = release.full_version
        cudnn_packages = (
            AptPackage(f"cudnn{release.major}-cuda-{build.cuda_major}", release.package_version),
            AptPackage(f"libcudnn{release.major}-cuda-{build.cuda_major}", release.package_version),
        )

    _note_unverified(notes, target, gpus, branch, wheel, engine, cudnn)
    _warn_lifecycle(warnings, facts, branch, target, _day(request))
    pip_cudnn = wheel.torch_flavour.pip_cudnn or ""
    for defect in facts.defects(torch_release.version, wheel.torch_flavour.pip_cudnn):
        cudnn_text = f", cuDNN {pip_cudnn}" if pip_cudnn else ""
        warnings.append(
            f"{engine.label} runs torch {torch_release.version}+{wheel.name}{cudnn_text}: "
            f"{defect.summary}; fix: {defect.fix} ({defect.id}, stack/nvidia_stack.yaml)"
        )
    hold = _unique_names((*driver_packages, *cuda_packages, *cudnn_packages))
    return StackPlan(
        repo_url=repo_url,
        driver_branch=branch.branch,
        driver_version=branch.version,
        driver_flavour=flavour,
        driver_packages=driver_packages,
        cuda_version=wheel.cuda.version,
        cuda_packages=cuda_packages,
        cudnn_version=cudnn_version,
        cudnn_packages=cudnn_packages,
        torch_flavour=wheel.name,
        engine=engine.name,
        engine_version=engine.version,
        torch_version=torch_release.version,
        hold_packages=hold,
        notes=tuple(notes),
        lock_profile=wheel.engine_flavour.lock_profile or "",
        docker_image=engine.docker_image,
        pip_cudnn=pip_cudnn,
        warnings=tuple(warnings),
    )


# ---------------------------------------------------------------------------------------
# inputs


def _resolve_os(os_info: OsInfo, facts: StackTable) -> OsTarget:
    distro = os_info.distro.strip().lower()
    version = os_info.version.strip()
    arch = _ARCH_ALIASES.get(os_info.arch.strip().lower(), os_info.arch.strip())
    for target in facts.os_targets:
        if (target.distro, target.version, target.arch) == (distro, version, arch):
            return target
    raise StackError(
        f"{KEY_OS}={distro} {version} ({arch}) is not supported: supported targets are "
        f"{_supported_os_text(facts)}; provision one of those releases",
        [KEY_OS],
    )


def _supported_os_text(facts: StackTable) -> str:
    grouped: dict[tuple[str, str], list[str]] = {}
    for target in facts.os_targets:
        grouped.setdefault((target.distro, target.version), []).append(target.arch)
    return "; ".join(
        f"{distro} {version} ({', '.join(arches)})"
        for (distro, version), arches in sorted(grouped.items())
    )


def _repo_url(base: str, target: OsTarget) -> str:
    clean = base.strip()
    if not clean or "://" not in clean or any(ch.isspace() for ch in clean):
        raise StackError(
            f"{KEY_REPO}={base!r} is not a URL: use e.g. {DEFAULT_REPO_BASE_URL} or a mirror of it",
            [KEY_REPO],
        )
    return f"{clean.rstrip('/')}/{target.repo_path}/"


def _identify_gpus(
    devices: Iterable[GpuDevice], facts: StackTable, notes: list[str]
) -> tuple[GpuInfo, ...]:
    found: list[GpuInfo] = []
    for device in devices:
        if not is_nvidia(device):
            notes.append(f"ignored non-NVIDIA PCI device {device.pci_vendor}:{device.pci_device}")
            continue
        try:
            info = identify_gpu(device, facts)
        except ValueError as exc:
            raise StackError(
                f"{KEY_GPUS}: PCI device id {device.pci_device!r} is malformed ({exc}): "
                "report ids as read from /sys/bus/pci/devices/*/device, e.g. 0x2330",
                [KEY_GPUS],
            ) from None
        if not info.known:
            notes.append(
                f"GPU {info.pci_device} is not in the table (unknown architecture): driver "
                "branch, kernel-module flavour and compute-capability checks skip it"
            )
        found.append(info)
    if not found:
        notes.append("no NVIDIA GPU detected: packages resolved for a GPU-less host")
    return tuple(found)


def _engine_releases(name: str, version: str, facts: StackTable) -> list[Engine]:
    """The release asked for, or for auto the default candidates (every release of an
    engine that marks none), newest first."""
    engine_name = name.strip().lower()
    releases = facts.engine_releases(engine_name)
    if not releases:
        known = ", ".join(sorted({e.name for e in facts.engines}))
        raise StackError(f"{KEY_ENGINE}={name!r} is unknown: use one of {known}", [KEY_ENGINE])
    wanted = version.strip().lower()
    if wanted == AUTO:
        return [e for e in releases if e.default_candidate] or releases
    exact = [e for e in releases if e.version == wanted]
    if not exact:
        known = ", ".join(e.version for e in releases)
        raise StackError(
            f"{KEY_ENGINE_VERSION}={version!r} is not a known {engine_name} release: use auto "
            f"or one of {known}",
            [KEY_ENGINE_VERSION],
        )
    return exact


def _engine_torch(engine: Engine, facts: StackTable) -> TorchRelease:
    release = facts.torch_release(engine.torch_version)
    if release is None:  # guarded by table validation
        raise StackError(f"the table lists no torch {engine.torch_version} for {engine.name}")
    return release


def _warn_lifecycle(
    warnings: list[str],
    facts: StackTable,
    branch: DriverBranch,
    target: OsTarget,
    today: datetime.date,
) -> None:
    """A plan on a branch NVIDIA has ended says so, with the date and a supported branch."""
    row = facts.branch(branch.branch) or branch
    if row.eol is not None:
        year, month = (int(part) for part in row.eol.split("-"))
        if (today.year, today.month) <= (year, month):
            return
        when = f"in {datetime.date(year, month, 1):%B %Y}"
    elif row.ended:
        when = "(date not recorded)"
    else:
        return
    live = [
        b
        for b in reversed(_branches_ascending(facts))
        if b.default_candidate and target.repo_path in b.repos and b.eol is not None
    ]
    fix = (
        f"move to {KEY_BRANCH}={live[0].branch} ({live[0].lifecycle})"
        if live
        else "move to a supported branch"
    )
    warnings.append(
        f"driver branch {row.branch} ({row.lifecycle}) reached end of life {when}: no more "
        f"security fixes from NVIDIA; fix: {fix}"
    )


def _parse_branch(value: str, facts: StackTable) -> DriverBranch | None:
    text = value.strip().lower()
    if text == AUTO:
        return None
    digits = text.removeprefix("r")
    branch = facts.branch(int(digits)) if digits.isascii() and digits.isdigit() else None
    if branch is None:
        known = ", ".join(str(b.branch) for b in _branches_ascending(facts))
        raise StackError(
            f"{KEY_BRANCH}={value!r} is not a known driver branch: use auto or one of {known}",
            [KEY_BRANCH],
        )
    return branch


def _apply_release(
    value: str, branch: DriverBranch | None, facts: StackTable, notes: list[str]
) -> DriverBranch | None:
    """The branch row moved to the release `nvidia_driver_version` names (same package set,
    that release's names and Debian revisions)."""
    text = value.strip().lower()
    if text == AUTO:
        return branch
    if not re.fullmatch(r"[1-9][0-9]{2}\.[0-9]+(\.[0-9]+)?", text):
        raise StackError(
            f"{KEY_VERSION}={value!r} is not a driver release: use auto or e.g. 580.126.09",
            [KEY_VERSION],
        )
    number = int(text.split(".", 1)[0])
    if branch is None:
        branch = facts.branch(number)
        if branch is None:
            known = ", ".join(str(b.branch) for b in _branches_ascending(facts))
            raise StackError(
                f"{KEY_VERSION}={text} is a release of branch {number}, which the table does "
                f"not know: use a release of {known}",
                [KEY_VERSION],
            )
    elif branch.branch != number:
        raise StackError(
            f"{KEY_VERSION}={text} is not a release of {KEY_BRANCH}={branch.branch}: use a "
            f"{branch.branch}.x release or set {KEY_BRANCH}={number}",
            [KEY_VERSION, KEY_BRANCH],
        )
    if text == branch.version:
        return branch
    pinned = branch.version

    def moved(pin: PackagePin, family: str) -> PackagePin:
        version = pin.version
        if version.startswith(f"{pinned}-"):
            revision = facts.driver_revision(family, text) or version[len(pinned) + 1 :]
            version = f"{text}-{revision}"
        return PackagePin(name=pin.name.replace(pinned, text), version=version)

    families: dict[str, FlavourPackages] = {}
    for family in ("ubuntu", "debian"):
        pkgs = branch.packages.for_family(family)
        if pkgs is not None:
            families[family] = FlavourPackages(
                open=tuple(moved(p, family) for p in pkgs.open),
                proprietary=tuple(moved(p, family) for p in pkgs.proprietary),
            )
    notes.append(
        f"{KEY_VERSION}={text}: branch {branch.branch} at this release instead of its "
        f"pinned {pinned} (package revisions from driver_revisions in "
        "stack/nvidia_stack.yaml)"
    )
    return branch.model_copy(update={"version": text, "packages": FamilyPackages(**families)})


def _parse_flavour(value: str) -> str | None:
    text = value.strip().lower()
    if text == AUTO:
        return None
    if text not in (OPEN, PROPRIETARY):
        raise StackError(
            f"{KEY_FLAVOUR}={value!r} is invalid: use auto, open or proprietary", [KEY_FLAVOUR]
        )
    return text


def _parse_cuda(value: str, facts: StackTable) -> CudaToolkit | None:
    text = value.strip().lower()
    if text == AUTO:
        return None
    cuda = facts.cuda(text)
    if cuda is None:
        known = ", ".join(c.version for c in _cudas_ascending(facts))
        raise StackError(
            f"{KEY_CUDA}={value!r} is not a known CUDA toolkit: use auto or one of {known}",
            [KEY_CUDA],
        )
    return cuda


def _parse_cudnn(value: str, facts: StackTable) -> tuple[Cudnn, ...] | None:
    """None: no cuDNN. Otherwise the candidate releases, best first."""
    text = value.strip().lower()
    if text == NONE:
        return None
    newest_first = tuple(sorted(facts.cudnn, key=lambda c: parse_version(c.version), reverse=True))
    if text == AUTO:
        return newest_first
    exact = facts.cudnn_release(text)
    if exact is not None:
        return (exact,)
    same_major = tuple(c for c in newest_first if text.isascii() and text == str(c.major))
    if same_major:
        return same_major
    known = ", ".join(c.version for c in reversed(newest_first))
    raise StackError(
        f"{KEY_CUDNN}={value!r} is not a known cuDNN: use auto, none, a major (e.g. 9) "
        f"or one of {known}",
        [KEY_CUDNN],
    )


# ---------------------------------------------------------------------------------------
# drivers and kernel modules


def _branches_ascending(facts: StackTable) -> list[DriverBranch]:
    return sorted(facts.driver_branches, key=lambda b: b.branch)


def _cudas_ascending(facts: StackTable) -> list[CudaToolkit]:
    return sorted(facts.cuda_toolkits, key=lambda c: parse_version(c.version))


def _branch_choice_text(current: int, good: Sequence[int]) -> str:
    """'570 or newer' / '580 or older' / 'one of 550, 580'."""
    if all(b > current for b in good):
        return f"{KEY_BRANCH}={good[0]} or newer"
    if all(b < current for b in good):
        return f"{KEY_BRANCH}={good[-1]} or older"
    return f"{KEY_BRANCH} one of {', '.join(str(b) for b in good)}"


def _check_branch_on_os(branch: DriverBranch, target: OsTarget, facts: StackTable) -> None:
    if target.repo_path in branch.repos:
        return
    good = [b.branch for b in _branches_ascending(facts) if target.repo_path in b.repos]
    fix = _branch_choice_text(branch.branch, good) if good else "another OS release"
    raise StackError(
        f"{KEY_BRANCH}={branch.branch} is not published in the CUDA repo for {target.label} "
        f"({target.repo_path}): use {fix}",
        [KEY_BRANCH, KEY_OS],
    )


def _gpu_branch_problem(branch: DriverBranch, gpus: Sequence[GpuInfo]) -> GpuInfo | None:
    return next((g for g in gpus if g.known and g.architecture not in branch.architectures), None)


def _check_branch_gpus(branch: DriverBranch, gpus: Sequence[GpuInfo], facts: StackTable) -> None:
    gpu = _gpu_branch_problem(branch, gpus)
    if gpu is None:
        return
    good = [b.branch for b in _branches_ascending(facts) if _gpu_branch_problem(b, gpus) is None]
    if good:
        fix = f"use {_branch_choice_text(branch.branch, good)}"
    else:
        fix = "no driver branch in the table supports every detected GPU: split them across hosts"
    raise StackError(
        f"{KEY_BRANCH}={branch.branch} ({branch.version}) does not support {gpu.label}: {fix}",
        [KEY_BRANCH, KEY_GPUS],
    )


def _resolve_flavour(requested: str | None, gpus: Sequence[GpuInfo], notes: list[str]) -> str:
    needs_open = [g for g in gpus if g.open_kernel_modules == "required"]
    no_open = [g for g in gpus if g.open_kernel_modules == "unsupported"]
    if needs_open and no_open:
        raise StackError(
            f"no kernel-module flavour drives all GPUs: {needs_open[0].label} requires the open "
            f"modules, {no_open[0].label} requires the proprietary ones: "
            "put them on separate hosts",
            [KEY_FLAVOUR, KEY_GPUS],
        )
    if requested == OPEN and no_open:
        raise StackError(
            f"{KEY_FLAVOUR}=open cannot drive {no_open[0].label}: open kernel modules need "
            f"Turing or newer (compute capability >= 7.5): use {KEY_FLAVOUR}=proprietary or auto",
            [KEY_FLAVOUR, KEY_GPUS],
        )
    if requested == PROPRIETARY and needs_open:
        raise StackError(
            f"{KEY_FLAVOUR}=proprietary cannot drive {needs_open[0].label}: "
            f"{needs_open[0].architecture.capitalize()} requires the open kernel modules: "
            f"use {KEY_FLAVOUR}=open or auto",
            [KEY_FLAVOUR, KEY_GPUS],
        )
    if requested is not None:
        return requested
    if no_open:
        notes.append(
            f"{KEY_FLAVOUR} auto -> proprietary: {no_open[0].label} predates Turing and "
            "cannot use the open kernel modules"
        )
        return PROPRIETARY
    if not gpus:
        notes.append(f"{KEY_FLAVOUR} auto -> open: no NVIDIA GPU detected (NVIDIA's default)")
    elif any(not g.known for g in gpus):
        notes.append(
            f"{KEY_FLAVOUR} auto -> open: NVIDIA's default since R560; an unknown GPU is assumed "
            f"to be Turing or newer (set {KEY_FLAVOUR}=proprietary for older GPUs)"
        )
    else:
        archs = ", ".join(sorted({g.architecture.capitalize() for g in gpus}))
        notes.append(
            f"{KEY_FLAVOUR} auto -> open: every GPU ({archs}) supports the open kernel modules"
        )
    return OPEN


def _check_driver_for_cuda(
    branch: DriverBranch, cuda: CudaToolkit, facts: StackTable, target: OsTarget
) -> None:
    if parse_version(branch.version) >= parse_version(cuda.min_driver):
        return
    newer = [
        b.branch
        for b in _branches_ascending(facts)
        if parse_version(b.version) >= parse_version(cuda.min_driver)
        and target.repo_path in b.repos
    ]
    older_cuda = [
        c.version
        for c in _cudas_ascending(facts)
        if parse_version(c.min_driver) <= parse_version(branch.version)
    ]
    fixes = []
    if newer:
        fixes.append(f"{KEY_BRANCH}={newer[0]} or newer")
    if older_cuda:
        fixes.append(f"{KEY_CUDA} <= {older_cuda[-1]}")
    raise StackError(
        f"{KEY_CUDA}={cuda.version} needs NVIDIA driver >= {cuda.min_driver}, but "
        f"{KEY_BRANCH}={branch.branch} ({branch.version}) is too old: use {', or '.join(fixes)}",
        [KEY_CUDA, KEY_BRANCH],
    )


def _auto_branch(
    facts: StackTable,
    target: OsTarget,
    gpus: Sequence[GpuInfo],
    wheels: Sequence[_Wheel],
    cuda_req: CudaToolkit | None,
    engine: Engine,
    notes: list[str],
) -> DriverBranch:
    candidates = [b for b in reversed(_branches_ascending(facts)) if b.default_candidate]
    rejected: list[str] = []
    for branch in candidates:
        driver = parse_version(branch.version)
        gpu = _gpu_branch_problem(branch, gpus)
        if target.repo_path not in branch.repos:
            rejected.append(f"{branch.branch} is not published for {target.repo_path}")
        elif gpu is not None:
            rejected.append(f"{branch.branch} does not support {gpu.label}")
        elif cuda_req is not None and driver < parse_version(cuda_req.min_driver):
            rejected.append(
                f"{branch.branch} ({branch.version}) is below CUDA {cuda_req.version}'s "
                f"minimum {cuda_req.min_driver}"
            )
        elif not any(driver >= parse_version(w.cuda.min_driver) for w in wheels):
            rejected.append(f"{branch.branch} ({branch.version}) is too old for every wheel")
        else:
            what = f"CUDA {cuda_req.version}" if cuda_req else f"the {engine.name} wheels"
            gpu_text = (
                "the detected GPUs (" + ", ".join(sorted({g.name for g in gpus})) + ")"
                if gpus
                else "a GPU-less host"
            )
            notes.append(
                f"{KEY_BRANCH} auto -> {branch.branch} ({branch.version}): newest LTS/production "
                f"branch in the table ({branch.lifecycle}) that supports {gpu_text} and {what}"
            )
            return branch
    others = [
        b.branch
        for b in _branches_ascending(facts)
        if not b.default_candidate
        and target.repo_path in b.repos
        and _gpu_branch_problem(b, gpus) is None
        and (cuda_req is None or parse_version(b.version) >= parse_version(cuda_req.min_driver))
    ]
    fix = (
        f"set {KEY_BRANCH} explicitly (candidates: {', '.join(map(str, others))})" if others else ""
    )
    if cuda_req is not None:
        fix = f"{fix}, or lower {KEY_CUDA}" if fix else f"lower {KEY_CUDA}"
    raise StackError(
        f"{KEY_BRANCH}=auto found no LTS/production branch for this host: "
        f"{'; '.join(rejected) or 'no branch is marked default_candidate'}: {fix or 'see table'}",
        [KEY_BRANCH],
    )


# ---------------------------------------------------------------------------------------
# CUDA, torch wheels and engine


def _check_engine_gpus(engine: Engine, gpus: Sequence[GpuInfo]) -> None:
    minimum = parse_version(engine.min_compute_capability)
    for gpu in gpus:
        cc = gpu.compute_capability_tuple()
        if cc is not None and cc < minimum:
            raise StackError(
                f"{KEY_ENGINE}={engine.name} {engine.version} needs compute capability >= "
                f"{engine.min_compute_capability}, but {gpu.label} is older: serve it on a "
                "newer GPU",
                [KEY_ENGINE, KEY_GPUS],
            )


def _check_cuda_on_os(cuda: CudaToolkit, target: OsTarget, facts: StackTable) -> None:
    if target.min_cuda is None or parse_version(cuda.version) >= parse_version(target.min_cuda):
        return
    good = [
        c.version
        for c in _cudas_ascending(facts)
        if parse_version(c.version) >= parse_version(target.min_cuda)
    ]
    raise StackError(
        f"{KEY_CUDA}={cuda.version} is not published for {target.label} (first CUDA there is "
        f"{target.min_cuda}): use {KEY_CUDA}={good[0] if good else target.min_cuda} or newer",
        [KEY_CUDA, KEY_OS],
    )


def _wheel_problem(
    engine: Engine,
    flavour: EngineFlavour,
    torch_flavour: TorchFlavour,
    cuda: CudaToolkit,
    target: OsTarget,
    gpus: Sequence[GpuInfo],
) -> str | None:
    if target.arch not in flavour.arches:
        return f"{engine.name} {engine.version} publishes no {target.arch} {flavour.name} build"
    if target.arch not in torch_flavour.arches:
        return f"torch has no {target.arch} {flavour.name} wheel"
    if target.min_cuda is not None and parse_version(cuda.version) < parse_version(target.min_cuda):
        return f"CUDA {cuda.version} is not published for {target.label}"
    low = parse_version(torch_flavour.min_compute_capability)
    high = parse_version(torch_flavour.max_compute_capability)
    for gpu in gpus:
        cc = gpu.compute_capability_tuple()
        if cc is not None and not low <= cc <= high:
            return (
                f"the {flavour.name} wheel covers compute capability "
                f"{torch_flavour.min_compute_capability}-{torch_flavour.max_compute_capability}, "
                f"not {gpu.label}"
            )
    return None


def _usable_wheels(
    engine: Engine,
    release: TorchRelease,
    facts: StackTable,
    target: OsTarget,
    gpus: Sequence[GpuInfo],
    cuda_req: CudaToolkit | None,
) -> tuple[list[_Wheel], dict[str, str]]:
    """Wheels usable on this host (table order) and why the others are not."""
    usable: list[_Wheel] = []
    rejected: dict[str, str] = {}
    for flavour in engine.flavours:
        torch_flavour = release.flavour(flavour.name)
        cuda = facts.cuda(torch_flavour.cuda) if torch_flavour else None
        if torch_flavour is None or cuda is None:  # guarded by table validation
            rejected[flavour.name] = "missing from the table"
            continue
        problem = _wheel_problem(engine, flavour, torch_flavour, cuda, target, gpus)
        if problem is None:
            usable.append(_Wheel(flavour, torch_flavour, cuda))
        else:
            rejected[flavour.name] = problem
    what = f"{KEY_ENGINE}={engine.name} {engine.version} (torch {release.version})"
    if not usable:
        raise StackError(
            f"{what} has no usable torch wheel on {target.label}: "
            + "; ".join(f"{name}: {why}" for name, why in rejected.items())
            + ": use a GPU/OS those wheels support or another engine",
            [KEY_ENGINE, KEY_GPUS, KEY_OS],
        )
    if cuda_req is None:
        return usable, rejected
    matching = [w for w in usable if w.cuda.version == cuda_req.version]
    if matching:
        return matching, rejected
    by_cuda = sorted(usable, key=lambda w: parse_version(w.cuda.version))
    available = ", ".join(f"{w.name} (CUDA {w.cuda.version})" for w in by_cuda)
    flavour_cuda = {f.name: f.cuda for f in release.flavours}
    excluded = [
        f"{name}: {why}"
        for name, why in rejected.items()
        if flavour_cuda.get(name) == cuda_req.version
    ]
    why_not = f" ({'; '.join(excluded)})" if excluded else ""
    choices = ", ".join(w.cuda.version for w in by_cuda)
    raise StackError(
        f"{KEY_CUDA}={cuda_req.version} has no torch wheel for {what} on {target.label}"
        f"{why_not}: available flavours are {available}; use {KEY_CUDA} one of {choices} or auto",
        [KEY_CUDA, KEY_ENGINE],
    )


def _choose_wheel(
    wheels: Sequence[_Wheel],
    rejected: dict[str, str],
    engine: Engine,
    release: TorchRelease,
    branch: DriverBranch,
    cuda_req: CudaToolkit | None,
    notes: list[str],
) -> _Wheel:
    driver = parse_version(branch.version)
    fits = [w for w in wheels if driver >= parse_version(w.cuda.min_driver)]
    if not fits:
        lowest = min(wheels, key=lambda w: parse_version(w.cuda.min_driver))
        raise StackError(
            f"{KEY_BRANCH}={branch.branch} ({branch.version}) is too old for every "
            f"{engine.name} {engine.version} wheel: the lowest, {lowest.name}, needs driver >= "
            f"{lowest.cuda.min_driver}: use a newer {KEY_BRANCH}",
            [KEY_BRANCH, KEY_ENGINE],
        )
    default = next((w for w in fits if w.name == engine.default_flavour), None)
    chosen = default or max(fits, key=lambda w: parse_version(w.cuda.version))
    if cuda_req is None:
        base = (
            f"{KEY_CUDA} auto -> {chosen.cuda.version}: {engine.name} {engine.version} runs on "
            f"torch {release.version}"
        )
        if default is not None:
            notes.append(f"{base}; {chosen.name} is its default wheel flavour")
        else:
            usable_default = next((w for w in wheels if w.name == engine.default_flavour), None)
            if usable_default is not None:
                why = (
                    f"needs driver >= {usable_default.cuda.min_driver} but branch "
                    f"{branch.branch} pins {branch.version}"
                )
            else:
                why = rejected.get(engine.default_flavour, "is not usable on this host")
            notes.append(
                f"{base}; its default flavour {engine.default_flavour} does not fit ({why}), "
                f"so the newest fitting flavour {chosen.name} is used"
            )
    notes.append(
        f"torch wheel {release.version}+{chosen.name} needs driver >= {chosen.cuda.min_driver} "
        f"(CUDA {chosen.cuda.release}); branch {branch.branch} pins {branch.version}"
    )
    return chosen


# ---------------------------------------------------------------------------------------
# cuDNN


def _cudnn_problem(
    release: Cudnn, cuda: CudaToolkit, gpus: Sequence[GpuInfo]
) -> tuple[CudnnBuild | None, str | None]:
    build = release.build_for(cuda.version)
    if build is None:
        ranges = ", ".join(f"{b.cuda_min}-{b.cuda_max}" for b in release.builds)
        return None, f"cuDNN {release.version} has builds for CUDA {ranges} only"
    minimum = parse_version(build.min_compute_capability)
    for gpu in gpus:
        cc = gpu.compute_capability_tuple()
        if cc is not None and cc < minimum:
            return None, (
                f"cuDNN {release.version} for CUDA {build.cuda_major} needs compute capability "
                f">= {build.min_compute_capability}, not {gpu.label}"
            )
        arch_min = build.architecture_min_cuda.get(gpu.architecture)
        if arch_min is not None and parse_version(cuda.version) < parse_version(arch_min):
            return None, (
                f"cuDNN {release.version} supports {gpu.architecture.capitalize()} only "
                f"with CUDA >= {arch_min}"
            )
    return build, None


def _resolve_cudnn(
    candidates: tuple[Cudnn, ...] | None,
    requested: str,
    cuda: CudaToolkit,
    gpus: Sequence[GpuInfo],
    facts: StackTable,
    notes: list[str],
) -> tuple[Cudnn, CudnnBuild] | None:
    if candidates is None:
        notes.append(f"{KEY_CUDNN}=none: no host cuDNN (pip wheels bring their own)")
        return None
    problems: list[str] = []
    for release in candidates:
        build, problem = _cudnn_problem(release, cuda, gpus)
        if build is not None:
            if requested.strip().lower() != release.version:
                notes.append(
                    f"{KEY_CUDNN} {requested.strip().lower()} -> {release.version} "
                    f"({release.full_version}): newest cuDNN with a CUDA {cuda.version} build "
                    "that supports every GPU"
                )
            return release, build
        problems.append(problem or f"cuDNN {release.version} does not fit")
    working = [
        c.version
        for c in sorted(facts.cudnn, key=lambda c: parse_version(c.version))
        if _cudnn_problem(c, cuda, gpus)[0] is not None
    ]
    fix = (
        f"{KEY_CUDNN} one of {', '.join(working)}, auto or none" if working else f"{KEY_CUDNN}=none"
    )
    raise StackError(
        f"{KEY_CUDNN}={requested} cannot be used with {KEY_CUDA}={cuda.version}: "
        f"{'; '.join(problems)}: use {fix}",
        [KEY_CUDNN, KEY_CUDA],
    )


# ---------------------------------------------------------------------------------------
# plan details


def _note_unverified(
    notes: list[str],
    target: OsTarget,
    gpus: Sequence[GpuInfo],
    branch: DriverBranch,
    wheel: _Wheel,
    engine: Engine,
    cudnn: tuple[Cudnn, CudnnBuild] | None,
) -> None:
    rows: list[tuple[str, bool]] = [
        (f"os {target.label}", target.verified),
        (f"driver branch {branch.branch}", branch.verified),
        (f"CUDA {wheel.cuda.version}", wheel.cuda.verified),
        (f"torch flavour {wheel.name}", wheel.torch_flavour.verified),
        (f"{engine.name} {wheel.name} build", wheel.engine_flavour.verified),
        (f"engine {engine.name} {engine.version}", engine.verified),
    ]
    rows += [(f"GPU {g.pci_device}", g.verified) for g in gpus if g.known]
    if cudnn is not None:
        rows.append((f"cuDNN {cudnn[0].version}", cudnn[0].verified))
    unverified = [label for label, verified in rows if not verified]
    if unverified:
        notes.append(
            "relies on table rows marked verified: false (see their notes in "
            "stack/nvidia_stack.yaml): " + ", ".join(unverified)
        )


def _unique_names(packages: Iterable[AptPackage]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for package in packages:
        seen.setdefault(package.name, None)
    return tuple(seen)
