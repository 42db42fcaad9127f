"""A stand-in for NVIDIA's CUDA apt repository: real, signed, served on the sandbox bridge.

Generated ONLY from autoglm_infra/stages/nvidia/nvidia_repo_packages.yaml, the record of what
NVIDIA publishes:
its names, versions and revision schemes, its Depends/Conflicts/Provides (the unversioned
">=" ones included), its version-locking packages, and releases and branches newer than
any plan picks, so "apt takes the newest" happens here as it does against NVIDIA. The
stack resolver's plans never feed it. Packages carry no driver.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from autoglm_testbed import dkms_standin
from autoglm_testbed.apt_repo import AptRepo, FileEntry, PackageSpec, build_repo
from autoglm_testbed.repo_site import RepoSite

REPO_PATH = "compute/cuda/repos"
NVIDIA_STAGE = Path(__file__).resolve().parents[1] / "autoglm_infra" / "stages" / "nvidia"
DATA_FILE = NVIDIA_STAGE / "nvidia_repo_packages.yaml"
PINNING_VIRTUAL = "nvidia-driver-pinning"


class PublishedDataError(ValueError):
    """The record of NVIDIA's packages is malformed or an entry lacks its evidence."""


@cache
def published(path: Path = DATA_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    check_evidence(data)
    return dict(data)


def _entries(data: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found: list[tuple[str, Mapping[str, Any]]] = [("pin_file", data["pin_file"])]
    for repo in data["repos"]:
        for key in ("releases", "branch_pinning", "packages", "others"):
            found += [(f"{repo['name']}.{key}", e) for e in repo.get(key, [])]
        found.append((f"{repo['name']}.version_pinning", repo["version_pinning"]))
    return found


def check_evidence(data: Mapping[str, Any]) -> None:
    """Every entry names a known source or says verified: false with a note."""
    sources = data.get("sources", {})
    problems = []
    for where, entry in _entries(data):
        label = f"{where} {entry.get('name') or entry.get('version') or entry.get('branch')}"
        source = entry.get("source")
        if source is not None and source not in sources and "://" not in str(source):
            problems.append(f"{label}: unknown source {source!r}")
        if source is None and (entry.get("verified") is not False or not entry.get("note")):
            problems.append(f"{label}: needs a source, or verified: false and a note")
    if problems:
        raise PublishedDataError("; ".join(problems))


def repo_data(name: str) -> Mapping[str, Any]:
    for repo in published()["repos"]:
        if repo["name"] == name:
            return dict(repo)
    raise PublishedDataError(f"no repository {name!r} in {DATA_FILE.name}")


def _branch(version: str) -> int:
    return int(version.split(".", 1)[0])


def _fill(text: str, **values: object) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def pin_file_text(pin_version: str) -> str:
    """The preferences file a pinning package ships (`580.95.05-*` or `580.*`)."""
    pin = published()["pin_file"]
    return (
        "# Stand-in of NVIDIA's version-locking file "
        "(see autoglm_infra/stages/nvidia/nvidia_repo_packages.yaml).\n"
        f"Package: {pin['packages']}\nPin: version {pin_version}\n"
        f"Pin-Priority: {pin['priority']}\n"
    )


def _pinning(name: str, version: str, pin_version: str, arch: str) -> PackageSpec:
    path = published()["pin_file"]["path"]
    return PackageSpec(
        name=name, version=version, architecture=arch,
        provides=PINNING_VIRTUAL, conflicts=PINNING_VIRTUAL, replaces=PINNING_VIRTUAL,
        description=f"APT driver pinning file ({pin_version})",
        files={path: FileEntry(pin_file_text(pin_version))}, conffiles=(path,),
    )  # fmt: skip


def _dkms_payload(version: str, depends: str) -> dict[str, Any]:
    """A kernel module package's DKMS shape: the stand-in module's source, dh_dkms's scripts
    and the dependency on dkms (autoglm_testbed/dkms_standin.py)."""
    files = {
        path: FileEntry(content, mode)
        for path, (content, mode) in dkms_standin.source_files(version).items()
    }
    return {
        "depends": ", ".join(d for d in (depends, dkms_standin.DKMS_DEPENDS) if d),
        "files": files,
        "maintainer_scripts": dkms_standin.maintainer_scripts(version),
    }


def repo_specs(name: str, dkms: bool = False) -> list[PackageSpec]:
    """Every package the named repository publishes, per the record (DATA_FILE).

    `dkms`: the kernel module packages carry their DKMS shape (a real module source that
    DKMS builds at install). Off for nspawn hosts: they share the controller's kernel, for
    which no headers package exists, and dkms with its compiler would cost every NVIDIA
    converge minutes. On for a VM, which has its own kernel."""
    repo = repo_data(name)
    arch = repo["architecture"]
    releases = [(r["version"], r["revision"]) for r in repo["releases"]]
    first: dict[int, str] = {}
    for version, _ in releases:
        first.setdefault(_branch(version), version)
    specs: list[PackageSpec] = []
    for version, revision in releases:
        branch = _branch(version)
        values = {"v": version, "b": branch, "r": revision, "first": first[branch]}
        for shape in repo["packages"]:
            if "branches" in shape and branch not in shape["branches"]:
                continue
            fields: dict[str, Any] = {"depends": _fill(shape.get("depends", ""), **values)}
            if dkms and shape.get("dkms"):
                fields = _dkms_payload(version, fields["depends"])
            specs.append(
                PackageSpec(
                    name=_fill(shape["name"], **values),
                    version=f"{version}-{revision}",
                    architecture=arch,
                    provides=_fill(shape.get("provides", ""), **values),
                    conflicts=_fill(shape.get("conflicts", ""), **values),
                    description=f"stand-in for NVIDIA's {_fill(shape['name'], **values)}",
                    **fields,
                )
            )
    pinning = repo["version_pinning"]
    revisions = dict(releases)
    for version in pinning["releases"]:
        revision = revisions[version] if pinning.get("revision_from_release") else "1"
        specs.append(
            _pinning(f"nvidia-driver-pinning-{version}", f"{version}-{revision}",
                     f"{version}-*", arch)
        )  # fmt: skip
    for entry in repo["branch_pinning"]:
        for version in entry["versions"]:
            specs.append(
                _pinning(f"nvidia-driver-pinning-{entry['branch']}", version,
                         f"{entry['branch']}.*", arch)
            )  # fmt: skip
    for other in repo["others"]:
        for version in other["versions"]:
            specs.append(
                PackageSpec(
                    name=other["name"], version=version, architecture=arch,
                    depends=_fill(other.get("depends", ""), version=version),
                    description=f"stand-in for NVIDIA's {other['name']}",
                )
            )  # fmt: skip
    return specs


class NvidiaRepoStandin(RepoSite):
    """Build the repositories under `workdir/www` and serve them on `bind`."""

    name = "nvidia-repo"

    def repo_dir(self, repo: str = "debian12") -> Path:
        return self.www / REPO_PATH / str(repo_data(repo)["path"])

    @property
    def base_url(self) -> str:
        """What `nvidia_repo_base_url` is set to in the sandbox."""
        return f"http://{self.bind}:{self.port}/{REPO_PATH}"

    def build(self, repos: Sequence[str] = ("debian12",), dkms: bool = False) -> list[AptRepo]:
        """Sandbox hosts are Debian 12: build only what is asked for (each costs seconds);
        `dkms`: the kernel module packages carry DKMS source (see repo_specs)."""
        built = []
        for repo in repos:
            target = self.repo_dir(repo)
            built.append(build_repo(target, repo_specs(repo, dkms), self.key, origin="NVIDIA"))
            # NVIDIA publishes the key next to the packages as <short id>.pub
            shutil.copyfile(self.key.armored_path, target / f"{self.key.short_id}.pub")
        return built

    def start(self, detached: bool = False) -> NvidiaRepoStandin:
        """Serve the repository; `detached` keeps it up after this process (the demo)."""
        preferred = 18000 + int(self.bind.split(".")[2]) if self.bind.count(".") == 3 else 0
        ready = f"{REPO_PATH}/{repo_data('debian12')['path']}/{self.key.short_id}.pub"
        return self.serve(ready, detached, preferred)
