"""Build a real, signed apt repository of stand-in packages, and run apt against it safely.

Our sandbox cannot reach NVIDIA's apt servers, so tests serve a repository with the same
package names, versions and dependency shapes (``cuda-drivers-570`` depends on
``nvidia-driver-570-open (= 570.172.08-1)``, ...), built with ``dpkg-deb``, indexed with
``dpkg-scanpackages`` and signed with a throw-away gpg key. Stand-ins carry no driver:
each installs ``/usr/share/doc/<name>/STANDIN`` saying so, plus the files a spec lists.

Layouts:

* ``flat`` – like NVIDIA's CUDA repo (``deb [signed-by=K] <base>/ /``) and the
  container-toolkit repo (one flat repo per arch): Packages(.gz), Release, Release.gpg
  and InRelease next to the .debs.
* ``dists`` – a classic ``dists/<suite>/<component>/binary-<arch>/`` + ``pool/`` tree.

Release files are written here (not by apt-ftparchive) so only dpkg-dev and gnupg are
needed. .debs are cached by a digest of their spec, the index is only re-signed when the
Packages content changes, so re-running a build is cheap and leaves InRelease untouched
(apt then reports "Hit").

:class:`IsolatedApt` runs apt-get/apt-cache with every path (sources, keyrings, lists,
cache, dpkg status, apt.conf.d) inside a scratch directory, so tests can use real apt on
this machine without touching /etc/apt or /var/lib/apt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "AptRepo",
    "AptRepoError",
    "FileEntry",
    "IsolatedApt",
    "PackageSpec",
    "SigningKey",
    "build_deb",
    "build_repo",
    "ensure_tools",
]

# Bump when the .deb layout produced here changes: invalidates every cached .deb.
BUILDER_VERSION = "1"
# Fixed timestamp for files inside the .debs, so identical specs give identical bytes.
SOURCE_DATE_EPOCH = 1_700_000_000
DEFAULT_MAINTAINER = "autoglm_infra stand-in builder <standin@localhost>"
STATE_FILE = ".standin-build.json"
MAINTAINER_SCRIPTS = frozenset({"preinst", "postinst", "prerm", "postrm", "config"})

# Tool -> Debian package that ships it.
_TOOLS = {
    "dpkg-deb": "dpkg",
    "dpkg-scanpackages": "dpkg-dev",
    "gpg": "gnupg",
    "gpgconf": "gnupg",
    "gpg-agent": "gnupg",
    "gpg-connect-agent": "gnupg",
    "gpgv": "gpgv",
}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION_RE = re.compile(r"^([0-9]+:)?[0-9][A-Za-z0-9.+~:-]*$")
_ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class AptRepoError(RuntimeError):
    """Building, signing or using a stand-in repository failed."""


def _run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(argv), cwd=cwd, env=env, input=input, capture_output=True)
    if proc.returncode != 0:
        raise AptRepoError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n"
            f"{proc.stderr.decode(errors='replace')[-3000:]}"
        )
    return proc


def ensure_tools(*, install: bool = True) -> None:
    """Make sure dpkg-deb, dpkg-scanpackages and gnupg exist; apt-get install them if root.

    Raises:
        AptRepoError: a tool is missing and could not be installed (message says how).
    """
    missing = sorted({pkg for tool, pkg in _TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, capture_output=True)
    still = sorted({pkg for tool, pkg in _TOOLS.items() if shutil.which(tool) is None})
    if still:
        raise AptRepoError(
            f"missing tools from Debian packages {', '.join(still)}; "
            f"run as root: apt-get install -y {' '.join(still)}"
        )


# --- package specs ---------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """Content and mode of a file a stand-in installs (e.g. an executable script)."""

    content: str | bytes
    mode: int = 0o644

    @property
    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


@dataclass(frozen=True)
class PackageSpec:
    """A stand-in binary package, named and versioned like the real one.

    Relationship fields use Debian syntax verbatim, e.g.
    ``depends="nvidia-driver-570-open (= 570.172.08-1), nvidia-modprobe"``.
    ``files`` maps absolute install paths to content (str, bytes or :class:`FileEntry`);
    ``maintainer_scripts`` maps preinst/postinst/prerm/postrm/config to a script (a
    ``#!/bin/sh`` + ``set -e`` header is added when the script has no shebang).
    ``extra_fields`` adds control fields verbatim (e.g. ``{"Multi-Arch": "same"}``).
    """

    name: str
    version: str
    architecture: str = "amd64"
    depends: str = ""
    pre_depends: str = ""
    recommends: str = ""
    provides: str = ""
    conflicts: str = ""
    breaks: str = ""
    replaces: str = ""
    description: str = ""
    section: str = "misc"
    priority: str = "optional"
    maintainer: str = DEFAULT_MAINTAINER
    files: Mapping[str, str | bytes | FileEntry] = field(default_factory=dict)
    maintainer_scripts: Mapping[str, str] = field(default_factory=dict)
    conffiles: Sequence[str] = ()
    extra_fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not _NAME_RE.match(self.name):
            problems.append(f"invalid package name {self.name!r}")
        if not _VERSION_RE.match(self.version):
            problems.append(f"invalid version {self.version!r}")
        if not _ARCH_RE.match(self.architecture):
            problems.append(f"invalid architecture {self.architecture!r}")
        for path in self.files:
            parts = path.split("/")
            if not path.startswith("/") or ".." in parts or path.endswith("/"):
                problems.append(f"file path must be absolute, without '..': {path!r}")
        for script in self.maintainer_scripts:
            if script not in MAINTAINER_SCRIPTS:
                problems.append(f"unknown maintainer script {script!r}")
        for conffile in self.conffiles:
            if conffile not in self.files:
                problems.append(f"conffile {conffile!r} is not in files")
        if problems:
            raise ValueError(f"PackageSpec {self.name}: " + "; ".join(problems))

    @property
    def deb_filename(self) -> str:
        # Debian file names drop the epoch ("1:2.0-1" -> "2.0-1").
        return f"{self.name}_{self.version.split(':', 1)[-1]}_{self.architecture}.deb"

    def digest(self) -> str:
        """Stable hash of everything that ends up in the .deb (cache key)."""

        def encode(value: object) -> object:
            if isinstance(value, FileEntry):
                return {"sha256": hashlib.sha256(value.data).hexdigest(), "mode": value.mode}
            if isinstance(value, bytes):
                return {"sha256": hashlib.sha256(value).hexdigest()}
            if isinstance(value, Mapping):
                return {str(k): encode(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [encode(v) for v in value]
            return value

        payload = {
            "builder": BUILDER_VERSION,
            "epoch": SOURCE_DATE_EPOCH,
            "spec": encode({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def standin_note(self) -> str:
        return (
            f"{self.name} {self.version} ({self.architecture}) is a TEST STAND-IN built by\n"
            "autoglm_testbed.apt_repo. It has the real package's name, version and\n"
            "dependencies but carries no driver, library or tool of the real package.\n"
        )

    def control(self, installed_size_kib: int) -> str:
        fields: list[tuple[str, str]] = [
            ("Package", self.name),
            ("Version", self.version),
            ("Architecture", self.architecture),
            ("Maintainer", self.maintainer),
            ("Installed-Size", str(installed_size_kib)),
            ("Pre-Depends", self.pre_depends),
            ("Depends", self.depends),
            ("Recommends", self.recommends),
            ("Provides", self.provides),
            ("Conflicts", self.conflicts),
            ("Breaks", self.breaks),
            ("Replaces", self.replaces),
            ("Section", self.section),
            ("Priority", self.priority),
            *self.extra_fields.items(),
        ]
        lines = [f"{key}: {value.strip()}" for key, value in fields if value.strip()]
        desc = self.description.strip().splitlines() or [f"{self.name} (test stand-in)"]
        lines.append(f"Description: {desc[0]}")
        for extra in [*desc[1:], "", "Test stand-in: carries none of the real package's files."]:
            lines.append(f" {extra}" if extra.strip() else " .")
        return "\n".join(lines) + "\n"


def _script_text(body: str) -> bytes:
    text = body if body.startswith("#!") else "#!/bin/sh\nset -e\n" + body
    return (text if text.endswith("\n") else text + "\n").encode()


def build_deb(spec: PackageSpec, out: Path) -> Path:
    """Build spec into the .deb file ``out`` (written atomically) and return ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[str, FileEntry] = {
        f"/usr/share/doc/{spec.name}/STANDIN": FileEntry(spec.standin_note())
    }
    for path, content in spec.files.items():
        entries[path] = content if isinstance(content, FileEntry) else FileEntry(content)
    with tempfile.TemporaryDirectory(prefix="standin-deb-") as tmp:
        stage = Path(tmp) / "pkg"
        (stage / "DEBIAN").mkdir(parents=True)
        size = 0
        for path, entry in sorted(entries.items()):
            dest = stage / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(entry.data)
            dest.chmod(entry.mode)
            size += len(entry.data)
        (stage / "DEBIAN" / "control").write_text(spec.control(max(1, math.ceil(size / 1024))))
        if spec.conffiles:
            (stage / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in spec.conffiles))
        for script, body in spec.maintainer_scripts.items():
            (stage / "DEBIAN" / script).write_bytes(_script_text(body))
            (stage / "DEBIAN" / script).chmod(0o755)
        # dpkg-deb insists on 0755-ish directories; mkdtemp/umask give 0700.
        for dirpath, _dirs, files in os.walk(stage):
            os.chmod(dirpath, 0o755)
            for name in files:
                os.utime(Path(dirpath) / name, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
            os.utime(dirpath, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
        for name in ("control", "conffiles"):
            if (stage / "DEBIAN" / name).exists():
                (stage / "DEBIAN" / name).chmod(0o644)
        tmp_out = Path(tmp) / spec.deb_filename
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        _run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), str(tmp_out)], env=env
        )
        shutil.copyfile(tmp_out, out.with_name(out.name + ".tmp"))
        out.with_name(out.name + ".tmp").replace(out)
    return out


# --- signing key -----------------------------------------------------------------------


@contextlib.contextmanager
def _gnupg_home(home: Path) -> Iterator[str]:
    """Yield a homedir path gpg can use, and stop its agent afterwards.

    gpg-agent puts its sockets in the homedir (no /run/user/<uid> here); a unix socket
    path is limited to 107 bytes, so long homedirs are reached through a short symlink.
    """
    short: Path | None = None
    path = str(home)
    if len(path) > 80:
        short = Path(tempfile.mkdtemp(prefix="gh-"))
        (short / "h").symlink_to(home)
        path = str(short / "h")
    try:
        yield path
    finally:
        agent = _agent_pid(path)
        subprocess.run(["gpgconf", "--homedir", path, "--kill", "all"], capture_output=True)
        # gpgconf returns before the agent has exited; callers expect it gone.
        deadline = time.monotonic() + 5
        while agent is not None and _pid_running(agent) and time.monotonic() < deadline:
            time.sleep(0.01)
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


def _agent_pid(homedir: str) -> int | None:
    """PID of the gpg-agent serving homedir, without starting one."""
    proc = subprocess.run(
        ["gpg-connect-agent", "--homedir", homedir, "--no-autostart", "getinfo pid", "/bye"],
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("D ") and line[2:].strip().isdigit():
            return int(line[2:].strip())
    return None


def _pid_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@dataclass(frozen=True)
class SigningKey:
    """A throw-away archive signing key kept in ``directory`` (cacheable between runs).

    Layout: ``gnupg/`` (private GNUPGHOME, mode 0700), ``archive-key.asc`` (armored
    public key, like NVIDIA's ``3bf863cc.pub``), ``archive-keyring.gpg`` (the same key
    dearmored, what ``signed-by=`` usually points to) and ``fingerprint``.
    """

    directory: Path
    fingerprint: str

    ARMORED_NAME = "archive-key.asc"
    DEARMORED_NAME = "archive-keyring.gpg"

    @property
    def gnupghome(self) -> Path:
        return self.directory / "gnupg"

    @property
    def armored_path(self) -> Path:
        return self.directory / self.ARMORED_NAME

    @property
    def dearmored_path(self) -> Path:
        return self.directory / self.DEARMORED_NAME

    @property
    def short_id(self) -> str:
        """Last 8 hex digits, lower case: how NVIDIA names key files (3bf863cc.pub)."""
        return self.fingerprint[-8:].lower()

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        uid: str = "Stand-in Archive Signing Key <standin-archive@localhost>",
        algo: Literal["ed25519", "rsa3072", "rsa4096"] = "ed25519",
    ) -> SigningKey:
        """Reuse the key cached in directory, or generate a new one (no passphrase)."""
        ensure_tools()
        directory = Path(directory).resolve()
        fpr_file = directory / "fingerprint"
        if fpr_file.exists():
            key = cls(directory, fpr_file.read_text().strip())
            if key._usable():
                return key
        home = directory / "gnupg"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True, mode=0o700)
        home.chmod(0o700)  # gpg warns about unsafe permissions otherwise
        with _gnupg_home(home) as gh:
            _run(
                ["gpg", "--homedir", gh, "--batch", "--pinentry-mode", "loopback",
                 "--passphrase", "", "--quick-generate-key", uid, algo, "sign", "never"]
            )  # fmt: skip
            listing = _run(["gpg", "--homedir", gh, "--with-colons", "--list-secret-keys"])
            fingerprint = next(
                line.split(":")[9]
                for line in listing.stdout.decode().splitlines()
                if line.startswith("fpr:")
            )
            armored = _run(["gpg", "--homedir", gh, "--armor", "--export", fingerprint]).stdout
            binary = _run(["gpg", "--homedir", gh, "--export", fingerprint]).stdout
        key = cls(directory, fingerprint)
        for path, data in ((key.armored_path, armored), (key.dearmored_path, binary)):
            path.write_bytes(data)
            path.chmod(0o644)  # apt reads signed-by keyrings as user _apt
        fpr_file.write_text(fingerprint + "\n")
        return key

    def _usable(self) -> bool:
        if not (self.armored_path.exists() and self.dearmored_path.exists()):
            return False
        with _gnupg_home(self.gnupghome) as gh:
            proc = subprocess.run(
                ["gpg", "--homedir", gh, "--with-colons", "--list-secret-keys", self.fingerprint],
                capture_output=True,
            )
        return proc.returncode == 0

    def sign_release(self, release: Path) -> tuple[Path, Path]:
        """Write InRelease (clear-signed) and Release.gpg (detached, armored) next to release."""
        release = Path(release)
        inrelease = release.with_name("InRelease")
        detached = release.with_name("Release.gpg")
        with _gnupg_home(self.gnupghome) as gh:
            base = ["gpg", "--homedir", gh, "--batch", "--yes", "--pinentry-mode", "loopback",
                    "--passphrase", "", "--local-user", self.fingerprint,
                    "--digest-algo", "SHA512"]  # fmt: skip
            for out, mode in (
                (inrelease, ["--clearsign"]),
                (detached, ["--armor", "--detach-sign"]),
            ):
                tmp = out.with_name(out.name + ".tmp")
                _run([*base, *mode, "--output", str(tmp), str(release)])
                tmp.chmod(0o644)
                tmp.replace(out)
        return inrelease, detached


# --- repository ------------------------------------------------------------------------


@dataclass(frozen=True)
class AptRepo:
    """What :func:`build_repo` produced, and how apt should be pointed at it."""

    root: Path
    layout: Literal["flat", "dists"]
    suite: str
    component: str
    fingerprint: str
    debs: tuple[Path, ...]
    rebuilt: tuple[str, ...]
    index_changed: bool

    @property
    def release_dir(self) -> Path:
        return self.root if self.layout == "flat" else self.root / "dists" / self.suite

    def source_line(self, base_url: str, signed_by: Path | str) -> str:
        """One-line ``deb`` source, e.g. ``deb [signed-by=/k.gpg] http://127.0.0.1:8080/ /``."""
        base = base_url.rstrip("/") + "/"
        where = "/" if self.layout == "flat" else f"{self.suite} {self.component}"
        return f"deb [signed-by={signed_by}] {base} {where}\n"

    def deb822(self, base_url: str, signed_by: Path | str) -> str:
        """The same source as a deb822 stanza (flat repos: ``Suites: /``, no Components)."""
        lines = ["Types: deb", f"URIs: {base_url.rstrip('/')}/"]
        if self.layout == "flat":
            lines.append("Suites: /")
        else:
            lines += [f"Suites: {self.suite}", f"Components: {self.component}"]
        lines.append(f"Signed-By: {signed_by}")
        return "\n".join(lines) + "\n"


def _deb_relpath(spec: PackageSpec, layout: str, component: str) -> str:
    if layout == "flat":
        return spec.deb_filename
    prefix = spec.name[:4] if spec.name.startswith("lib") else spec.name[0]
    return f"pool/{component}/{prefix}/{spec.name}/{spec.deb_filename}"


def _release_text(
    entries: Mapping[str, bytes], fields: Sequence[tuple[str, str]], date: float
) -> str:
    stamp = email.utils.formatdate(date, usegmt=True).replace("GMT", "UTC")
    lines = [f"{key}: {value}" for key, value in fields if value]
    lines.append(f"Date: {stamp}")
    for title, algo in (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"),
                        ("SHA512", "sha512")):  # fmt: skip
        lines.append(f"{title}:")
        for rel, data in sorted(entries.items()):
            lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data):>16} {rel}")
    return "\n".join(lines) + "\n"


def build_repo(
    root: Path,
    packages: Sequence[PackageSpec],
    signing_key: SigningKey,
    *,
    layout: Literal["flat", "dists"] = "flat",
    suite: str = "stable",
    component: str = "main",
    origin: str = "autoglm-standin",
    label: str = "autoglm stand-in",
    architectures: Sequence[str] | None = None,
    date: float | None = None,
) -> AptRepo:
    """Build (or update) a signed apt repository of stand-in packages under root.

    Unchanged .debs are reused; .debs this function built earlier but that are no longer
    in ``packages`` are removed; the index is rewritten and re-signed only if its content
    or the key changed. ``architectures`` (dists layout) defaults to those of the
    packages plus amd64; ``date`` (epoch seconds) defaults to now.

    Example::

        key = SigningKey.load_or_create(cache / "key")
        repo = build_repo(tmp / "repo", [PackageSpec("cuda-keyring", "1.1-1", "all")], key)
        print(repo.source_line("http://127.0.0.1:8080/", key.dearmored_path))
    """
    ensure_tools()
    if layout not in ("flat", "dists"):
        raise ValueError(f"layout must be 'flat' or 'dists', not {layout!r}")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    state_path = root / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
        if state.get("builder") != BUILDER_VERSION:
            state = {}
    except (FileNotFoundError, ValueError):
        state = {}
    old_debs: dict[str, str] = dict(state.get("debs", {}))

    wanted: dict[str, PackageSpec] = {}
    for spec in packages:
        rel = _deb_relpath(spec, layout, component)
        if rel in wanted:
            raise ValueError(f"duplicate package {spec.name} {spec.version} {spec.architecture}")
        wanted[rel] = spec

    rebuilt = []
    new_debs: dict[str, str] = {}
    for rel, spec in wanted.items():
        digest = spec.digest()
        if old_debs.get(rel) != digest or not (root / rel).is_file():
            build_deb(spec, root / rel)
            rebuilt.append(rel)
        new_debs[rel] = digest
    removed = old_debs.keys() - new_debs.keys()
    for rel in removed:
        (root / rel).unlink(missing_ok=True)

    # Index files are named relative to the directory holding Release.
    if layout == "flat":
        release_dir = root
        scans = {"Packages": ["dpkg-scanpackages", "--multiversion", "."]}
        fields = [("Origin", origin), ("Label", label)]
    else:
        release_dir = root / "dists" / suite
        arches = sorted(
            set(architectures or [])
            | ({s.architecture for s in packages} - {"all"})
            | (set() if architectures else {"amd64"})
        )
        scans = {
            f"{component}/binary-{arch}/Packages": [
                "dpkg-scanpackages", "--multiversion", "--arch", arch, f"pool/{component}"
            ]
            for arch in arches
        }  # fmt: skip
        fields = [
            ("Origin", origin),
            ("Label", label),
            ("Suite", suite),
            ("Codename", suite),
            ("Architectures", " ".join(arches)),
            ("Components", component),
        ]
    index_names = sorted([*scans, *(name + ".gz" for name in scans)])
    wanted_index = {"layout": layout, "fields": fields, "files": index_names}
    signed_files = [release_dir / n for n in ("Release", "InRelease", "Release.gpg")]
    same_inputs = (
        not rebuilt
        and not removed
        and state.get("index_inputs") == json.loads(json.dumps(wanted_index))
        and state.get("fingerprint") == signing_key.fingerprint
        and all(p.is_file() for p in signed_files)
        and all((release_dir / name).is_file() for name in index_names)
    )
    index_changed = False
    index_digest = state.get("index")
    if not same_inputs:  # scanning costs ~5 ms per .deb: skip it when nothing changed
        index = {name: _run(argv, cwd=root).stdout for name, argv in scans.items()}
        for name in list(index):
            index[name + ".gz"] = gzip.compress(index[name], compresslevel=9, mtime=0)
        index_digest = hashlib.sha256(
            json.dumps(
                [{k: hashlib.sha256(v).hexdigest() for k, v in sorted(index.items())}, fields]
            ).encode()
        ).hexdigest()
        index_changed = not (
            state.get("index") == index_digest
            and state.get("fingerprint") == signing_key.fingerprint
            and all(p.is_file() for p in signed_files)
            and all((release_dir / name).is_file() for name in index)
        )
        if index_changed:
            for name, data in index.items():
                path = release_dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_name(path.name + ".tmp").write_bytes(data)
                path.with_name(path.name + ".tmp").replace(path)
            release = release_dir / "Release"
            release.with_name("Release.tmp").write_text(
                _release_text(index, fields, time.time() if date is None else date)
            )
            release.with_name("Release.tmp").replace(release)
            signing_key.sign_release(release)

    new_state = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "debs": new_debs,
            "index": index_digest,
            "index_inputs": wanted_index,
            "fingerprint": signing_key.fingerprint,
        },
        indent=1,
        sort_keys=True,
    )
    if not state_path.exists() or state_path.read_text() != new_state:
        state_path.write_text(new_state)
    return AptRepo(
        root=root,
        layout=layout,
        suite=suite,
        component=component,
        fingerprint=signing_key.fingerprint,
        debs=tuple(root / rel for rel in sorted(new_debs)),
        rebuilt=tuple(sorted(rebuilt)),
        index_changed=index_changed,
    )


# --- apt confined to a scratch directory -------------------------------------------------


class IsolatedApt:
    """apt-get / apt-cache whose whole state lives in ``workdir``.

    An APT_CONFIG file (read before /etc/apt/apt.conf.d) redirects apt.conf.d, sources,
    preferences, trusted keys, lists, cache and the dpkg status file (an empty one: apt
    sees a system with nothing installed). Only download-type commands make sense.

    Example::

        apt = IsolatedApt(tmp / "apt")
        apt.add_source(repo.source_line(url, key.dearmored_path))
        apt.apt_get("update")
        debs = apt.download("cuda-drivers-570")
    """

    def __init__(
        self,
        workdir: Path,
        *,
        architecture: str | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir).resolve()
        w = self.workdir
        for sub in ("apt.conf.d", "sources.list.d", "preferences.d", "trusted.gpg.d",
                    "auth.conf.d", "state/lists/partial", "cache/archives/partial",
                    "dpkg/updates", "dpkg/info", "log"):  # fmt: skip
            (w / sub).mkdir(parents=True, exist_ok=True)
        (w / "dpkg" / "status").touch()
        (w / "sources.list").touch()
        arch = architecture or _run(["dpkg", "--print-architecture"]).stdout.decode().strip()
        settings = {
            "Dir::Etc::main": "/dev/null",
            "Dir::Etc::parts": w / "apt.conf.d",
            "Dir::Etc::sourcelist": w / "sources.list",
            "Dir::Etc::sourceparts": w / "sources.list.d",
            "Dir::Etc::preferences": w / "preferences",
            "Dir::Etc::preferencesparts": w / "preferences.d",
            "Dir::Etc::trusted": w / "trusted.gpg",
            "Dir::Etc::trustedparts": w / "trusted.gpg.d",
            "Dir::Etc::netrc": w / "auth.conf",
            "Dir::Etc::netrcparts": w / "auth.conf.d",
            "Dir::State": w / "state",
            "Dir::State::lists": w / "state/lists",
            "Dir::State::status": w / "dpkg/status",
            "Dir::Cache": w / "cache",
            "Dir::Cache::archives": w / "cache/archives",
            "Dir::Log": w / "log",
            "APT::Architecture": arch,
            "Acquire::Languages": "none",
            "Acquire::Retries": "0",
        }
        lines = [f'{key} "{value}";' for key, value in settings.items()]
        lines.append(f'APT::Architectures {{ "{arch}"; }};')
        if os.geteuid() == 0:
            # Our scratch dirs are not readable by _apt; on real hosts keep keyrings 0644.
            lines.append('APT::Sandbox::User "root";')
        lines.extend(extra_config)
        self.config_path = w / "apt.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def archives(self) -> Path:
        return self.workdir / "cache" / "archives"

    def add_source(self, text: str, name: str = "standin") -> Path:
        """Add a one-line (``deb ...``) or deb822 (``Types: deb``) source."""
        suffix = "sources" if text.lstrip().startswith("Types:") else "list"
        path = self.workdir / "sources.list.d" / f"{name}.{suffix}"
        path.write_text(text if text.endswith("\n") else text + "\n")
        return path

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        env.update(APT_CONFIG=str(self.config_path), DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        return env

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an apt tool (apt-get, apt-cache, apt-config) in this sandbox."""
        proc = subprocess.run(
            [tool, *args], env=self.env(), capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AptRepoError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def apt_get(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("apt-get", *args, check=check)

    def apt_cache(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("apt-cache", *args, check=check)

    def download(self, *packages: str) -> list[Path]:
        """Resolve packages with their dependencies and download the .debs; return them."""
        self.apt_get("install", "--download-only", "-y", "--no-install-recommends", *packages)
        return sorted(self.archives.glob("*.deb"))
