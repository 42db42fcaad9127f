"""Hosts as they are found: keep a healthy driver, CUDA and cuDNN, never stack or downgrade.

`host_plan` turns settings, the host profile and what is installed into the stack plan
plus one decision per component (driver, CUDA, cuDNN): keep, install, upgrade or refuse,
each with its reason. With nvidia_driver_policy=adopt (the default) a healthy loaded
driver of a branch the resolver allows for the GPU is kept whoever installed it, and the
rest is resolved against it; with manage, a driver no package manager owns stops the
NVIDIA stage before any change. Pure: no pyinfra import.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from packaging.version import InvalidVersion, Version

from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.config.schema import Settings
from autoglm_infra.stack.facts_table import (
    PINNING_PACKAGE_PREFIX,
    default_stack_table,
    parse_version,
)
from autoglm_infra.stack.installed import DPKG, InstalledStack
from autoglm_infra.stack.request import stack_request
from autoglm_infra.stack.resolver import (
    AptPackage,
    StackError,
    StackPlan,
    StackRequest,
    resolve_stack,
)
from autoglm_infra.stages.nvidia.apt_check import driver_release

ADOPT, MANAGE = "adopt", "manage"
KEEP, INSTALL, UPGRADE, REFUSE = "keep", "install", "upgrade", "refuse"


@dataclass(frozen=True)
class Component:
    name: str  # driver | CUDA | cuDNN
    action: str  # keep | install | upgrade | refuse
    why: str
    packages: tuple[AptPackage, ...] = ()  # what this component installs


@dataclass(frozen=True)
class HostPlan:
    plan: StackPlan
    components: tuple[Component, ...]
    refusal: str = ""  # non-empty: the NVIDIA stage stops before any change

    @property
    def packages(self) -> list[tuple[str, str]]:
        """(name, version) the stage installs and holds, driver first."""
        return [(p.name, p.version) for c in self.components for p in c.packages]

    def ours(self, name: str) -> bool:
        """Whether the stage manages this component's packages (not a host's own, kept)."""
        return any(c.name == name and c.packages for c in self.components)

    @property
    def pin_driver_version(self) -> str:
        """The driver release apt may install: the planned or the kept one, never another."""
        return self.plan.driver_version

    @property
    def pin_cuda_packages(self) -> list[tuple[str, str]]:
        return [(p.name, p.version) for c in self.components if c.name == "CUDA"
                for p in c.packages]  # fmt: skip

    @property
    def pin_cudnn_version(self) -> str:
        """The planned cuDNN, or "" where the host's own build is kept (never moved)."""
        return self.plan.cudnn_version if self.ours("cuDNN") else ""

    @property
    def moving_driver_version(self) -> str:
        """The release other installed driver packages move to ("" : a kept driver stays)."""
        return self.plan.driver_version if self.ours("driver") else ""


def _adoptable(settings: Settings, profile: HostProfile, found: InstalledStack) -> str:
    """Why the loaded driver cannot be kept ("" when it can)."""
    if not found.driver_version:
        return "no driver is loaded"
    if not found.driver_healthy:
        return "nvidia-smi does not answer with the loaded module's version"
    branch = found.branch
    if settings.nvidia_driver_branch not in ("auto", str(branch)):
        return f"nvidia_driver_branch={settings.nvidia_driver_branch} asks for another branch"
    if settings.nvidia_driver_version not in ("auto", found.driver_version):
        return f"nvidia_driver_version={settings.nvidia_driver_version} pins another release"
    flavour = settings.nvidia_driver_flavour
    if found.driver_flavour and flavour not in ("auto", found.driver_flavour):
        return f"nvidia_driver_flavour={flavour}, the loaded module is {found.driver_flavour}"
    try:  # the resolver decides whether that branch serves this GPU, OS and engine
        resolve_stack(_request(settings, profile, found, str(branch)))
    except StackError as exc:
        return str(exc)
    return ""


def _request(
    settings: Settings, profile: HostProfile, found: InstalledStack, branch: str
) -> StackRequest:
    prefer = [v for v, _ in found.cuda_toolkits]
    if ceiling := _version(found.cuda_supported):  # the driver's own CUDA capability
        below = [c.version for c in default_stack_table().cuda_toolkits]
        prefer += sorted(
            (v for v in below if (ver := _version(v)) and ver <= ceiling and v not in prefer),
            key=parse_version,
            reverse=True,
        )
    return replace(
        stack_request(settings, profile),
        driver_branch=branch,
        adopted_driver=found.driver_version,
        prefer_cuda=tuple(prefer),
    )


def _version(text: str) -> Version | None:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


def host_plan(settings: Settings, profile: HostProfile, found: InstalledStack) -> HostPlan:
    """Raises StackError (a ValueError) when the configuration cannot work on this host."""
    policy = settings.nvidia_driver_policy
    why_not = _adoptable(settings, profile, found) if policy == ADOPT else ""
    adopted = policy == ADOPT and not why_not
    if adopted:
        plan = resolve_stack(_request(settings, profile, found, str(found.branch)))
        driver = Component(
            "driver",
            KEEP,
            f"{found.describe_driver()}: loaded and healthy, branch {found.branch} serves "
            f"this host (nvidia_driver_policy=adopt)",
            _own_driver_packages(found),
        )
    else:
        plan = resolve_stack(stack_request(settings, profile))
        pinned = settings.nvidia_driver_version != "auto"
        driver = _driver_component(plan, found, policy, why_not, pinned)
        kept_other = found.driver_version not in ("", plan.driver_version)
        if driver.action == KEEP and kept_other:
            # a newer point release kept: the plan follows the driver that stays
            plan = resolve_stack(_request(settings, profile, found, str(found.branch)))
    refusal = ""
    if found.unmanaged and not adopted:
        refusal = (
            f"nvidia_driver_policy={policy}, but {found.describe_driver()}"
            + ("" if policy == MANAGE else f" cannot be kept ({why_not})")
            + ": installing NVIDIA's packages over it would stack a second driver. Nothing "
            "was changed. Fix: uninstall it first (sudo nvidia-uninstall, reboot) and converge "
            "again"
            + (", or set nvidia_driver_policy: adopt to keep it" if policy == MANAGE else "")
        )
        driver = Component("driver", REFUSE, refusal)
    components = tuple(
        _respect_holds(c, found)
        for c in (driver, _cuda_component(plan, found), _cudnn_component(plan, found))
    )
    if not refusal and (refused := [c for c in components if c.action == REFUSE]):
        # a host's hold: nothing is installed, pinned or rebooted for a plan it blocks
        refusal = "; ".join(f"{c.name}: {c.why}" for c in refused) + ". Nothing was changed."
    return HostPlan(plan, components, refusal)


def _driver_component(
    plan: StackPlan, found: InstalledStack, policy: str, why_not: str, pinned: bool = False
) -> Component:
    packages = plan.driver_packages
    if not found.driver_version and (ours := _ours(packages, found)):
        return Component(
            "driver",
            KEEP,
            f"the planned {plan.driver_version} is installed (not loaded: no GPU, or a reboot "
            "is due)",
            ours,
        )
    if not found.driver_version:
        return Component(
            "driver", INSTALL, f"no driver on the host: {plan.driver_version}", packages
        )
    same_branch = found.branch == plan.driver_branch
    newer = parse_version(found.driver_version) > parse_version(plan.driver_version)
    if same_branch and newer and pinned:
        return Component(
            "driver",
            UPGRADE,
            f"DOWNGRADE {found.describe_driver()} -> {plan.driver_version}: "
            f"nvidia_driver_version={plan.driver_version} pins that release",
            packages,
        )
    if same_branch and newer:
        return Component(
            "driver",
            KEEP,
            f"{found.describe_driver()} is a newer point release of branch "
            f"{plan.driver_branch} than the plan's {plan.driver_version}: never downgraded",
            _own_driver_packages(found),
        )
    if found.driver_version == plan.driver_version and found.owner == DPKG:
        return Component(
            "driver",
            KEEP,
            f"{found.describe_driver()}: the planned release",
            _ours(packages, found),
        )
    reason = why_not if policy == ADOPT else "nvidia_driver_policy=manage"
    return Component(
        "driver",
        UPGRADE,
        f"{found.describe_driver()} -> {plan.driver_version} ({reason})",
        packages,
    )


def _own_driver_packages(found: InstalledStack) -> tuple[AptPackage, ...]:
    """The driver packages an earlier converge installed and holds, at their versions: a
    kept driver keeps them (held, never removed as "the previous plan's")."""
    return tuple(
        AptPackage(name, version)
        for name, version in sorted(found.packages.items())
        if name in found.own_held
        and (driver_release(name, version) is not None or name.startswith(PINNING_PACKAGE_PREFIX))
    )


def _ours(packages: tuple[AptPackage, ...], found: InstalledStack) -> tuple[AptPackage, ...]:
    """The planned packages when all are installed at the planned versions (kept held)."""
    if packages and all(found.packages.get(p.name) == p.version for p in packages):
        return packages
    return ()


def _cuda_component(plan: StackPlan, found: InstalledStack) -> Component:
    if ours := _ours(plan.cuda_packages, found):
        return Component("CUDA", KEEP, f"CUDA {plan.cuda_version} as planned", ours)
    have = dict(found.cuda_toolkits)
    if plan.cuda_version in have:
        return Component(
            "CUDA", KEEP, f"CUDA {plan.cuda_version} is installed ({have[plan.cuda_version]})"
        )
    if have:
        shown = ", ".join(f"{v} ({e})" for v, e in found.cuda_toolkits)
        return Component(
            "CUDA",
            KEEP,
            f"the host has CUDA {shown}: no second toolkit ({plan.cuda_version}) is stacked "
            "beside it (the torch wheels bring their own CUDA runtime)",
        )
    return Component(
        "CUDA", INSTALL, f"no CUDA toolkit on the host: {plan.cuda_version}", plan.cuda_packages
    )


def _cudnn_component(plan: StackPlan, found: InstalledStack) -> Component:
    if not plan.cudnn_packages:
        return Component("cuDNN", KEEP, "cudnn_version=none: no host cuDNN is planned")
    if ours := _ours(plan.cudnn_packages, found):
        return Component("cuDNN", KEEP, f"cuDNN {plan.cudnn_version} as planned", ours)
    if found.cudnn:
        shown = ", ".join(f"{pkg} {version}" for _, version, pkg in found.cudnn)
        return Component(
            "cuDNN", KEEP, f"the host has {shown}: kept, no second build is stacked beside it"
        )
    return Component(
        "cuDNN", INSTALL, f"no cuDNN on the host: {plan.cudnn_version}", plan.cudnn_packages
    )


def _respect_holds(component: Component, found: InstalledStack) -> Component:
    held = [
        p.name
        for p in component.packages
        if p.name in found.held and found.packages.get(p.name) != p.version
    ]
    if not held:
        return component
    return Component(
        component.name,
        REFUSE,
        f"{', '.join(held)} held on the host (apt-mark showhold): not changed behind the "
        f"user's back; `apt-mark unhold {' '.join(held)}` lets the deploy {component.action} it",
    )
