"""A stand-in for NVIDIA's container toolkit apt repository: real, signed, served over HTTP.

Same layout as nvidia.github.io/libnvidia-container: the key at ``<base>/gpgkey`` and one
flat repository per architecture at ``<base>/stable/deb/<arch>/``. Packages carry the
real names and dependency shape (nvidia-container-toolkit -> -base and
libnvidia-container-tools -> libnvidia-container1, all at one version), at the version
the configuration pins plus an older build, so pinning and holds are exercised. They
contain no hook or runtime binary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autoglm_infra.config.schema import Settings
from autoglm_testbed.apt_repo import AptRepo, PackageSpec, build_repo
from autoglm_testbed.repo_site import RepoSite

REPO_PATH = "libnvidia-container"
DEFAULT_VERSION = str(Settings.model_fields["docker_toolkit_version"].default)


def older(version: str) -> str:
    """A version apt orders just below `version` (same upstream, revision 0)."""
    return version.rsplit("-", 1)[0] + "-0"


def toolkit_specs(version: str, arch: str = "amd64") -> list[PackageSpec]:
    """The four packages at `version`, with exact-version dependencies like NVIDIA's."""

    def spec(name: str, depends: str = "") -> PackageSpec:
        return PackageSpec(
            name=name, version=version, architecture=arch, depends=depends,
            description=f"stand-in for NVIDIA's {name} (no hook or runtime inside)",
        )  # fmt: skip

    return [
        spec("libnvidia-container1"),
        spec("libnvidia-container-tools", f"libnvidia-container1 (= {version})"),
        spec("nvidia-container-toolkit-base"),
        spec(
            "nvidia-container-toolkit",
            f"nvidia-container-toolkit-base (= {version}), libnvidia-container-tools (= {version})",
        ),
    ]


class ContainerToolkitRepoStandin(RepoSite):
    """Build the repository under `workdir/www` and serve it on `bind`."""

    name = "toolkit-repo"

    def repo_dir(self, arch: str = "amd64") -> Path:
        return self.www / REPO_PATH / "stable" / "deb" / arch

    @property
    def base_url(self) -> str:
        """What `docker_toolkit_repo_base_url` is set to in the sandbox."""
        return f"http://{self.bind}:{self.port}/{REPO_PATH}"

    def build(self, version: str = DEFAULT_VERSION) -> AptRepo:
        specs = toolkit_specs(version) + toolkit_specs(older(version))
        repo = build_repo(self.repo_dir(), specs, self.key)
        shutil.copyfile(self.key.armored_path, self.www / REPO_PATH / "gpgkey")
        return repo

    def start(self, detached: bool = False, port: int = 0) -> ContainerToolkitRepoStandin:
        """Serve; a fixed `port` keeps the hosts' apt source unchanged across demo runs."""
        return self.serve(f"{REPO_PATH}/gpgkey", detached, port)
