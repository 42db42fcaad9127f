"""A stand-in for NVIDIA's CUDA apt repository: real, signed, served on the sandbox bridge.

Packages carry NVIDIA's names, versions and dependency shapes, taken from the plans the
stack resolver makes for Debian 12 (so the repository can never drift from the data
table), plus an older build of each so pinning is exercised. They contain no driver.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autoglm_infra.stack.resolver import OsInfo, StackError, StackRequest, resolve_stack
from autoglm_infra.testbed.apt_repo import AptRepo, PackageSpec, build_repo
from autoglm_infra.testbed.repo_site import RepoSite

REPO_PATH = "compute/cuda/repos"
DEBIAN12 = OsInfo(distro="debian", version="12", arch="x86_64")
# A driver stand-in provides and conflicts with this, so two branches cannot coexist and
# a branch change must remove the old one, as with NVIDIA's real packages.
DRIVER_VIRTUAL = "nvidia-driver-standin"


def planned_packages(branches: tuple[str, ...] = ("570", "580", "590")) -> dict[str, str]:
    """name -> version of every package a Debian 12 plan can ask for."""
    wanted: dict[str, str] = {}
    for branch in branches:
        for flavour in ("open", "proprietary"):
            request = StackRequest(os=DEBIAN12, driver_branch=branch, driver_flavour=flavour)
            try:
                plan = resolve_stack(request)
            except StackError:
                continue
            for pkg in (*plan.driver_packages, *plan.cuda_packages, *plan.cudnn_packages):
                wanted[pkg.name] = pkg.version
    return wanted


def older(version: str) -> str:
    """A version apt orders just below `version` (same upstream, Debian revision 0)."""
    return version.rsplit("-", 1)[0] + "-0"


def newer(version: str) -> str:
    return version.rsplit("-", 1)[0] + "-9"


def standin(name: str, version: str, catalogue: dict[str, str]) -> PackageSpec:
    depends, provides, conflicts = "", "", ""
    if name.startswith(("cuda-drivers", "nvidia-open")):
        provides = conflicts = DRIVER_VIRTUAL
    if name.startswith("cudnn9-cuda-"):
        lib = "lib" + name
        if lib in catalogue:
            depends = f"{lib} (= {version})"
    return PackageSpec(
        name=name, version=version, depends=depends, provides=provides, conflicts=conflicts,
        description=f"stand-in for NVIDIA's {name} (no driver inside)",
    )  # fmt: skip


def catalogue_specs(extra_newer: tuple[str, ...] = ()) -> list[PackageSpec]:
    wanted = planned_packages()
    specs = []
    for name, version in sorted(wanted.items()):
        specs.append(standin(name, version, wanted))
        specs.append(standin(name, older(version), wanted))
        if name in extra_newer:
            specs.append(standin(name, newer(version), wanted))
    return specs


class NvidiaRepoStandin(RepoSite):
    """Build the repository under `workdir/www` and serve it on `bind`."""

    name = "nvidia-repo"

    @property
    def repo_dir(self) -> Path:
        return self.www / REPO_PATH / "debian12" / "x86_64"

    @property
    def base_url(self) -> str:
        """What `nvidia_repo_base_url` is set to in the sandbox."""
        return f"http://{self.bind}:{self.port}/{REPO_PATH}"

    def build(self, extra_newer: tuple[str, ...] = ()) -> AptRepo:
        repo = build_repo(self.repo_dir, catalogue_specs(extra_newer), self.key)
        # NVIDIA publishes the key next to the packages as <short id>.pub
        shutil.copyfile(self.key.armored_path, self.repo_dir / f"{self.key.short_id}.pub")
        return repo

    def start(self, detached: bool = False) -> NvidiaRepoStandin:
        """Serve the repository; `detached` keeps it up after this process (the demo)."""
        preferred = 18000 + int(self.bind.split(".")[2]) if self.bind.count(".") == 3 else 0
        ready = f"{REPO_PATH}/debian12/x86_64/{self.key.short_id}.pub"
        return self.serve(ready, detached, preferred)
