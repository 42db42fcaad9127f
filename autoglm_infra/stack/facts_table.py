"""Load and validate the compatibility table (stack/nvidia_stack.yaml) into frozen objects.

The table is the one place the driver/CUDA/cuDNN/torch/engine numbers live. A malformed
table raises :class:`StackTableError` listing every problem with its location, e.g.
``driver_branches[2].version: '590.48' does not start with the branch number 580``.

Example::

    table = load_stack_table()
    table.branch(580).version        # '580.95.05'
    table.cuda("12.8").min_driver    # '570.124.06'
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_TABLE_PATH = Path(__file__).resolve().parent / "nvidia_stack.yaml"

CpuArch = Literal["x86_64", "aarch64"]
PackageFamily = Literal["ubuntu", "debian"]
OpenModuleSupport = Literal["unsupported", "supported", "required"]
PackageScheme = Literal["branch_suffixed", "pinning"]

PINNING_PACKAGE_PREFIX = "nvidia-driver-pinning-"

_NUMERIC_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_PCI_ID = re.compile(r"(?:0x)?([0-9a-f]{1,4})")
_DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_DEB_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~:-]*")
_MONTH = re.compile(r"20[0-9]{2}-(0[1-9]|1[0-2])")
_PROFILE = re.compile(r"[a-z0-9][a-z0-9.-]*")


class StackTableError(ValueError):
    """The compatibility table is missing, unreadable or inconsistent."""


def parse_version(text: str) -> tuple[int, ...]:
    """Dotted numeric version -> tuple for ordering ('570.124.06' -> (570, 124, 6))."""
    if not _NUMERIC_VERSION.fullmatch(text):
        raise ValueError(f"{text!r} is not a dotted numeric version")
    return tuple(int(part) for part in text.split("."))


def normalize_pci_id(value: str) -> str:
    """'0x2330', '2330', '0X2330' -> '0x2330'. Raises ValueError when not a 16-bit hex id."""
    match = _PCI_ID.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(f"{value!r} is not a PCI id (expected hex like 0x2330)")
    return f"0x{int(match.group(1), 16):04x}"


def _check_numeric(value: str) -> str:
    parse_version(value)
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _SourcedRow(_Frozen):
    """A table row: every fact carries where it comes from and whether it was confirmed."""

    source: str = Field(min_length=1)
    verified: bool
    note: str = ""

    @model_validator(mode="after")
    def _unverified_rows_explain_themselves(self) -> _SourcedRow:
        if not self.source.strip():
            raise ValueError("source must not be blank")
        if not self.verified and not self.note.strip():
            raise ValueError("a row with verified: false needs a note saying what is unconfirmed")
        return self


class OsTarget(_SourcedRow):
    distro: str
    version: str
    arch: CpuArch
    repo_path: str
    package_family: PackageFamily
    min_cuda: str | None = None

    @field_validator("min_cuda")
    @classmethod
    def _numeric(cls, value: str | None) -> str | None:
        return None if value is None else _check_numeric(value)

    @field_validator("repo_path")
    @classmethod
    def _repo_path(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]+/(x86_64|sbsa)", value):
            raise ValueError(f"{value!r} is not <distro><ver>/<x86_64|sbsa>")
        return value

    @property
    def label(self) -> str:
        return f"{self.distro} {self.version} ({self.arch})"


class Architecture(_SourcedRow):
    name: str
    compute_capabilities: tuple[str, ...] = Field(min_length=1)
    open_kernel_modules: OpenModuleSupport

    @field_validator("compute_capabilities")
    @classmethod
    def _numeric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_numeric(item) for item in value)


class GpuModel(_SourcedRow):
    pci_device: str
    name: str
    architecture: str
    compute_capability: str

    @field_validator("pci_device")
    @classmethod
    def _pci(cls, value: str) -> str:
        return normalize_pci_id(value)

    @field_validator("compute_capability")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)


class PackagePin(_Frozen):
    name: str
    version: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DEB_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a Debian package name")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _DEB_VERSION.fullmatch(value):
            raise ValueError(f"{value!r} is not a Debian version string")
        return value


class FlavourPackages(_Frozen):
    open: tuple[PackagePin, ...] = Field(min_length=1)
    proprietary: tuple[PackagePin, ...] = Field(min_length=1)

    def for_flavour(self, flavour: str) -> tuple[PackagePin, ...]:
        return self.open if flavour == "open" else self.proprietary


class FamilyPackages(_Frozen):
    ubuntu: FlavourPackages | None = None
    debian: FlavourPackages | None = None

    def for_family(self, family: str) -> FlavourPackages | None:
        return self.ubuntu if family == "ubuntu" else self.debian if family == "debian" else None


class DriverBranch(_SourcedRow):
    branch: int = Field(gt=0)
    version: str
    lifecycle: str
    eol: str | None = None  # YYYY-MM NVIDIA ends the branch
    default_candidate: bool
    package_scheme: PackageScheme
    architectures: tuple[str, ...] = Field(min_length=1)
    repos: tuple[str, ...] = Field(min_length=1)
    packages: FamilyPackages

    @field_validator("version")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)

    @field_validator("eol")
    @classmethod
    def _month(cls, value: str | None) -> str | None:
        if value is not None and not _MONTH.fullmatch(value):
            raise ValueError(f"eol {value!r} is not a month YYYY-MM")
        return value

    @property
    def ended(self) -> bool:
        """The lifecycle says end of life without a recorded month."""
        return self.eol is None and "end of life" in self.lifecycle.lower()

    @model_validator(mode="after")
    def _consistent(self) -> DriverBranch:
        prefix = f"{self.branch}."
        if not self.version.startswith(prefix):
            raise ValueError(
                f"version {self.version!r} does not start with the branch number {self.branch}"
            )
        for family in ("ubuntu", "debian"):
            pkgs = self.packages.for_family(family)
            if pkgs is not None:
                for flavour in ("open", "proprietary"):
                    self._check_pins(family, flavour, pkgs.for_flavour(flavour))
        return self

    def _check_pins(self, family: str, flavour: str, pins: tuple[PackagePin, ...]) -> None:
        where = f"packages.{family}.{flavour}"
        # NVIDIA's version-locking packages: per branch (<branch>-<n>) or per release
        # (<version>-<rev>); either may lead the list (installed in its own transaction).
        pinning = {
            f"{PINNING_PACKAGE_PREFIX}{self.branch}": str(self.branch),
            f"{PINNING_PACKAGE_PREFIX}{self.version}": f"{self.version}-",
        }
        for index, pin in enumerate(pins):
            if pin.name.startswith(PINNING_PACKAGE_PREFIX):
                prefix = pinning.get(pin.name)
                if index != 0 or prefix is None or not pin.version.startswith(prefix):
                    raise ValueError(
                        f"{where}: a pinning package comes first, named "
                        f"{PINNING_PACKAGE_PREFIX}<branch>=<branch>-… or "
                        f"{PINNING_PACKAGE_PREFIX}<version>=<version>-…"
                    )
            elif not pin.version.startswith(f"{self.version}-"):
                raise ValueError(
                    f"{where}: {pin.name}={pin.version} is not the pinned driver {self.version}"
                )
        drivers = [p for p in pins if not p.name.startswith(PINNING_PACKAGE_PREFIX)]
        if not drivers:
            raise ValueError(f"{where}: lists no driver package")
        branch_tag = str(self.branch)
        for pin in drivers:
            suffixed = branch_tag in pin.name
            if suffixed != (self.package_scheme == "branch_suffixed"):
                kind = "branch-suffixed" if suffixed else "unversioned"
                raise ValueError(f"{where}: {pin.name} is {kind}, not {self.package_scheme}")


class DriverRevision(_SourcedRow):
    """The Debian revision NVIDIA's driver builds carry from `from_version` on."""

    family: PackageFamily
    from_version: str
    revision: str

    @field_validator("from_version")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)


class CudaToolkit(_SourcedRow):
    version: str
    release: str
    package: str
    package_version: str
    min_driver: str

    @field_validator("version", "min_driver")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)

    @model_validator(mode="after")
    def _consistent(self) -> CudaToolkit:
        if len(parse_version(self.version)) != 2:
            raise ValueError(f"version {self.version!r} must be <major>.<minor>")
        expected = "cuda-toolkit-" + self.version.replace(".", "-")
        if self.package != expected:
            raise ValueError(f"package {self.package!r} should be {expected!r}")
        if not self.package_version.startswith(f"{self.version}."):
            raise ValueError(f"package_version {self.package_version!r} is not a {self.version}.x")
        return self


class CudnnBuild(_Frozen):
    cuda_major: int = Field(gt=0)
    cuda_min: str
    cuda_max: str
    min_compute_capability: str
    architecture_min_cuda: dict[str, str] = Field(default_factory=dict)

    @field_validator("cuda_min", "cuda_max", "min_compute_capability")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)

    @model_validator(mode="after")
    def _range(self) -> CudnnBuild:
        for bound in (self.cuda_min, self.cuda_max):
            if parse_version(bound)[0] != self.cuda_major:
                raise ValueError(f"{bound} is not a CUDA {self.cuda_major}.x version")
        if parse_version(self.cuda_min) > parse_version(self.cuda_max):
            raise ValueError("cuda_min is above cuda_max")
        for value in self.architecture_min_cuda.values():
            _check_numeric(value)
        return self

    def covers(self, cuda: str) -> bool:
        low, high = parse_version(self.cuda_min), parse_version(self.cuda_max)
        return low <= parse_version(cuda) <= high


class Cudnn(_SourcedRow):
    version: str
    full_version: str
    package_version: str
    builds: tuple[CudnnBuild, ...] = Field(min_length=1)

    @field_validator("version", "full_version")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)

    @model_validator(mode="after")
    def _consistent(self) -> Cudnn:
        if not self.full_version.startswith(f"{self.version}."):
            raise ValueError(f"full_version {self.full_version} is not a {self.version}.x")
        if not self.package_version.startswith(f"{self.full_version}-"):
            raise ValueError(f"package_version {self.package_version} is not {self.full_version}-…")
        return self

    @property
    def major(self) -> int:
        return parse_version(self.version)[0]

    def build_for(self, cuda: str) -> CudnnBuild | None:
        return next((build for build in self.builds if build.covers(cuda)), None)


class TorchFlavour(_SourcedRow):
    name: str
    cuda: str
    arches: tuple[CpuArch, ...] = Field(min_length=1)
    min_compute_capability: str
    max_compute_capability: str
    pip_cudnn: str | None = None  # the nvidia-cudnn wheel this torch wheel pins

    @field_validator("cuda", "min_compute_capability", "max_compute_capability")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)

    @field_validator("pip_cudnn")
    @classmethod
    def _optional_numeric(cls, value: str | None) -> str | None:
        return None if value is None else _check_numeric(value)

    @model_validator(mode="after")
    def _tag_matches_cuda(self) -> TorchFlavour:
        expected = "cu" + self.cuda.replace(".", "")
        if self.name != expected:
            raise ValueError(f"flavour {self.name!r} does not match its CUDA {self.cuda}")
        return self


class TorchRelease(_Frozen):
    version: str
    flavours: tuple[TorchFlavour, ...] = Field(min_length=1)

    def flavour(self, name: str) -> TorchFlavour | None:
        return next((f for f in self.flavours if f.name == name), None)


class EngineFlavour(_SourcedRow):
    name: str
    arches: tuple[CpuArch, ...] = Field(min_length=1)
    lock_profile: str | None = None  # autoglm_infra/locks/<lock_profile>.txt; None: no PyPI lock

    @field_validator("lock_profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        if value is not None and not _PROFILE.fullmatch(value):
            raise ValueError(f"lock_profile {value!r} is not a lock profile name")
        return value


class Engine(_SourcedRow):
    name: str
    version: str
    released: str = ""  # YYYY-MM-DD
    default_candidate: bool = False  # serve_engine_version=auto may pick it
    torch_version: str
    default_flavour: str
    min_compute_capability: str
    docker_image: str = ""  # image tag for docker mode, e.g. vllm/vllm-openai:v0.33.0
    flavours: tuple[EngineFlavour, ...] = Field(min_length=1)

    @field_validator("min_compute_capability")
    @classmethod
    def _numeric(cls, value: str) -> str:
        return _check_numeric(value)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def flavour(self, name: str) -> EngineFlavour | None:
        return next((f for f in self.flavours if f.name == name), None)


class KnownDefect(_SourcedRow):
    """A torch build's defect that matters for the model; plans on it carry a warning."""

    id: str
    torch_versions: tuple[str, ...] = Field(min_length=1)
    cudnn_below: str | None = None  # affected only with the wheel's cuDNN below this
    summary: str
    fix: str

    def affects(self, torch_version: str, pip_cudnn: str | None) -> bool:
        if torch_version not in self.torch_versions:
            return False
        if self.cudnn_below is None or pip_cudnn is None:
            return True
        return parse_version(pip_cudnn) < parse_version(self.cudnn_below)


class StackTable(_Frozen):
    """The whole compatibility table, cross-checked on load."""

    schema_version: Literal[1]
    os_targets: tuple[OsTarget, ...] = Field(min_length=1)
    architectures: tuple[Architecture, ...] = Field(min_length=1)
    gpus: tuple[GpuModel, ...]
    driver_branches: tuple[DriverBranch, ...] = Field(min_length=1)
    cuda_toolkits: tuple[CudaToolkit, ...] = Field(min_length=1)
    cudnn: tuple[Cudnn, ...]
    torch: tuple[TorchRelease, ...] = Field(min_length=1)
    engines: tuple[Engine, ...] = Field(min_length=1)
    driver_revisions: tuple[DriverRevision, ...] = ()
    known_defects: tuple[KnownDefect, ...] = ()

    # -- lookups -------------------------------------------------------------------------
    def architecture(self, name: str) -> Architecture | None:
        return next((a for a in self.architectures if a.name == name), None)

    def gpu(self, pci_device: str) -> GpuModel | None:
        return next((g for g in self.gpus if g.pci_device == pci_device), None)

    def branch(self, number: int) -> DriverBranch | None:
        return next((b for b in self.driver_branches if b.branch == number), None)

    def driver_revision(self, family: str, version: str) -> str | None:
        """Revision of NVIDIA's `family` build of driver `version` (None: unknown)."""
        rows = [
            r
            for r in self.driver_revisions
            if r.family == family and parse_version(r.from_version) <= parse_version(version)
        ]
        if not rows:
            return None
        return max(rows, key=lambda r: parse_version(r.from_version)).revision

    def cuda(self, version: str) -> CudaToolkit | None:
        return next((c for c in self.cuda_toolkits if c.version == version), None)

    def cudnn_release(self, version: str) -> Cudnn | None:
        return next((c for c in self.cudnn if c.version == version), None)

    def torch_release(self, version: str) -> TorchRelease | None:
        return next((t for t in self.torch if t.version == version), None)

    def engine(self, name: str, version: str | None = None) -> Engine | None:
        """The release `version` of engine `name`; without a version, its newest release."""
        if version is not None:
            return next((e for e in self.engines if (e.name, e.version) == (name, version)), None)
        releases = self.engine_releases(name)
        return releases[0] if releases else None

    def engine_releases(self, name: str) -> list[Engine]:
        """Every release of engine `name`, newest first."""
        named = [e for e in self.engines if e.name == name]
        return sorted(named, key=lambda e: _release_key(e.version), reverse=True)

    def defects(self, torch_version: str, pip_cudnn: str | None) -> list[KnownDefect]:
        return [d for d in self.known_defects if d.affects(torch_version, pip_cudnn)]

    # -- cross-row consistency -----------------------------------------------------------
    @model_validator(mode="after")
    def _cross_references(self) -> StackTable:
        problems: list[str] = []
        _unique(problems, "os_targets", [(o.distro, o.version, o.arch) for o in self.os_targets])
        _unique(problems, "architectures", [a.name for a in self.architectures])
        _unique(problems, "gpus", [g.pci_device for g in self.gpus])
        _unique(problems, "driver_branches", [b.branch for b in self.driver_branches])
        _unique(problems, "cuda_toolkits", [c.version for c in self.cuda_toolkits])
        _unique(problems, "cudnn", [c.version for c in self.cudnn])
        _unique(problems, "torch", [t.version for t in self.torch])
        _unique(problems, "engines", [(e.name, e.version) for e in self.engines])
        for i, gpu in enumerate(self.gpus):
            arch = self.architecture(gpu.architecture)
            if arch is None:
                problems.append(f"gpus[{i}].architecture: unknown {gpu.architecture!r}")
            elif gpu.compute_capability not in arch.compute_capabilities:
                problems.append(
                    f"gpus[{i}].compute_capability: {gpu.compute_capability} is not a "
                    f"{arch.name} compute capability {list(arch.compute_capabilities)}"
                )
        self._check_branches(problems)
        ordered = sorted(self.cuda_toolkits, key=lambda c: parse_version(c.version))
        for older, newer in itertools.pairwise(ordered):
            if parse_version(newer.min_driver) < parse_version(older.min_driver):
                problems.append(
                    f"cuda_toolkits: CUDA {newer.version} needs driver {newer.min_driver}, "
                    f"older than CUDA {older.version}'s {older.min_driver} (must be monotonic)"
                )
        self._check_torch_and_engines(problems)
        if problems:
            raise ValueError("\n  - ".join(problems))
        return self

    def _check_branches(self, problems: list[str]) -> None:
        repo_families = {o.repo_path: o.package_family for o in self.os_targets}
        for i, branch in enumerate(self.driver_branches):
            for arch in branch.architectures:
                if self.architecture(arch) is None:
                    problems.append(f"driver_branches[{i}].architectures: unknown {arch!r}")
            for repo in branch.repos:
                family = repo_families.get(repo)
                if family is None:
                    problems.append(f"driver_branches[{i}].repos: {repo!r} is not an os_target")
                elif branch.packages.for_family(family) is None:
                    problems.append(f"driver_branches[{i}].packages: no {family} packages")

    def _check_torch_and_engines(self, problems: list[str]) -> None:
        for i, release in enumerate(self.torch):
            _unique(problems, f"torch[{i}].flavours", [f.name for f in release.flavours])
            for flavour in release.flavours:
                if self.cuda(flavour.cuda) is None:
                    problems.append(
                        f"torch[{i}] {flavour.name}: CUDA {flavour.cuda} is not in cuda_toolkits"
                    )
        for i, engine in enumerate(self.engines):
            engine_torch = self.torch_release(engine.torch_version)
            if engine_torch is None:
                problems.append(f"engines[{i}].torch_version: {engine.torch_version} not in torch")
                continue
            _unique(problems, f"engines[{i}].flavours", [f.name for f in engine.flavours])
            if engine.flavour(engine.default_flavour) is None:
                problems.append(
                    f"engines[{i}].default_flavour: {engine.default_flavour} not in its flavours"
                )
            for engine_flavour in engine.flavours:
                torch_flavour = engine_torch.flavour(engine_flavour.name)
                if torch_flavour is None:
                    problems.append(
                        f"engines[{i}] {engine_flavour.name}: torch {engine_torch.version} "
                        "has no such flavour"
                    )
                elif not set(engine_flavour.arches) <= set(torch_flavour.arches):
                    problems.append(
                        f"engines[{i}] {engine_flavour.name}: arches "
                        f"{list(engine_flavour.arches)} exceed torch {engine_torch.version}'s "
                        f"{list(torch_flavour.arches)}"
                    )


def _release_key(version: str) -> tuple[int, ...]:
    """'0.5.6.post1' -> (0, 5, 6, 1): numeric parts in order, for newest-first sorting."""
    return tuple(int(part) for part in re.findall(r"[0-9]+", version))


def _unique(problems: list[str], where: str, keys: list[Any]) -> None:
    seen: set[Any] = set()
    for key in keys:
        if key in seen:
            problems.append(f"{where}: duplicate entry {key!r}")
        seen.add(key)


def _format_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_stack_table(path: Path | None = None) -> StackTable:
    """Read and validate the table; raise StackTableError naming every problem."""
    table_path = path if path is not None else DEFAULT_TABLE_PATH
    try:
        # libyaml when PyYAML has it (its wheels do): ten times faster than pure Python
        raw = yaml.load(table_path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except OSError as exc:
        raise StackTableError(f"{table_path}: cannot read the stack table: {exc}") from exc
    except yaml.YAMLError as exc:
        raise StackTableError(f"{table_path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise StackTableError(f"{table_path}: expected a mapping at the top level")
    try:
        return StackTable.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            where = _format_location(tuple(error["loc"]))
            lines.append(f"  - {where}: {message}" if where else f"  - {message}")
        raise StackTableError(f"{table_path} is malformed:\n" + "\n".join(lines)) from None


@functools.lru_cache(maxsize=1)
def default_stack_table() -> StackTable:
    """The repository's table, loaded once per process."""
    return load_stack_table(DEFAULT_TABLE_PATH)
