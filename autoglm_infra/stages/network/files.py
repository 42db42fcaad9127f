"""Exact content of every file the proxy and mirrors stage manages, and which to remove. Pure.

Where credentials go (all root-only, mode 0600; everything else is world-readable and
never holds one):

- apt reads the proxy login from ``auth.conf.d`` (``machine http://host:port``), so the
  apt.conf.d proxy line has no credentials.
- ``/etc/autoglm/network.env`` holds the proxy variables with credentials (and, with an
  npm token, ``NPM_CONFIG_USERCONFIG`` pointing at the 0600 npm auth file). Docker's
  drop-in reads it as an EnvironmentFile; later stages and root shells source it, so
  pip, npm, curl and the hub client honour proxy and no_proxy the same way.
- the profile snippet exports the same variables without credentials and sources the
  env file when the reader may read it (root).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from autoglm_infra.common.managed_file import ManagedFile
from autoglm_infra.config.keys_network import NetworkKeys

APT_PROXY = "/etc/apt/apt.conf.d/80autoglm-proxy"
APT_PROXY_AUTH = "/etc/apt/auth.conf.d/autoglm-proxy.conf"
APT_DISTRO_SOURCE = "/etc/apt/sources.list.d/autoglm-distro.sources"
PIP_CONF = "/etc/pip.conf"
NPMRC = "/etc/npmrc"  # Debian's npm: globalconfig=/etc/npmrc
NPM_AUTH = "/etc/autoglm/npm-auth.npmrc"
NETWORK_ENV = "/etc/autoglm/network.env"
PROFILE_SNIPPET = "/etc/profile.d/autoglm-proxy.sh"
DOCKER_PROXY_DROPIN = "/etc/systemd/system/docker.service.d/autoglm-proxy.conf"
CA_DIR = "/usr/local/share/ca-certificates/autoglm"
CA_STATE = "/var/lib/autoglm/network-ca-certs"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Distro source files that apt_mirror_url replaces; moved here and back, never edited.
DISTRO_SOURCES = (
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d/debian.sources",
    "/etc/apt/sources.list.d/ubuntu.sources",
)
DISABLED_SOURCES_DIR = "/var/lib/autoglm/apt-sources-disabled"

# Every fixed path this stage may write: each one not written this run is removed.
MANAGED_PATHS = (
    APT_PROXY,
    APT_PROXY_AUTH,
    APT_DISTRO_SOURCE,
    PIP_CONF,
    NPMRC,
    NPM_AUTH,
    NETWORK_ENV,
    PROFILE_SNIPPET,
    DOCKER_PROXY_DROPIN,
    CA_STATE,
)
HEADER = "Managed by autoglm-infra (proxy and mirrors stage); edits are overwritten."
DEFAULT_NPM_REGISTRY = "https://registry.npmjs.org/"

# (os_id, version) -> (codename, components, archive keyring)
DISTROS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("debian", "12"): (
        "bookworm",
        "main non-free-firmware",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    ),
    ("ubuntu", "22.04"): (
        "jammy",
        "main restricted universe multiverse",
        "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    ),
    ("ubuntu", "24.04"): (
        "noble",
        "main restricted universe multiverse",
        "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    ),
}

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")
# Characters that need no quoting in sh and in systemd EnvironmentFile values.
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9%@:/._,~+\[\]-]*$")


class NetworkConfigError(ValueError):
    """A secret or CA file cannot be used as configured; the message names the key."""


@dataclass(frozen=True)
class NetworkSecrets:
    """Values read on the controller (controller_secrets.read_secret), never from data."""

    proxy_password: str | None = None
    npm_token: str | None = None

    def __repr__(self) -> str:  # never show the values, even in a traceback
        return (
            f"NetworkSecrets(proxy_password={'***' if self.proxy_password else None}, "
            f"npm_token={'***' if self.npm_token else None})"
        )


@dataclass(frozen=True)
class CaCert:
    name: str  # file name on the host, ends in .crt
    pem: bytes


@dataclass(frozen=True)
class NetworkPlan:
    files: list[ManagedFile]  # write these (exact content and mode)
    remove: list[str]  # delete these if present
    ca_names: list[str]  # certificate file names under CA_DIR

    def paths(self) -> list[str]:
        return [f.path for f in self.files]


# ----------------------------------------------------------------------------- helpers


def ca_cert(source: str, data: bytes) -> CaCert:
    """A CA file read on the controller, named after its file; refuses what is not PEM."""
    if not _PEM_CERT.search(data):
        raise NetworkConfigError(
            f"ca_cert_files: {source} holds no PEM certificate "
            "('-----BEGIN CERTIFICATE-----'); convert DER with "
            "`openssl x509 -inform der -in FILE -out FILE.crt`"
        )
    stem = posixpath.basename(source)
    stem = re.sub(r"\.(crt|pem|cer)$", "", stem) or "ca"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    return CaCert(f"{stem}.crt", data if data.endswith(b"\n") else data + b"\n")


def proxy_with_login(proxy_url: str, username: str | None, password: str | None) -> str:
    """proxy_url with percent-encoded user:password, for root-only files only."""
    if not username:
        return proxy_url
    parts = urlsplit(proxy_url)
    login = quote(username, safe="")
    if password is not None:
        login += ":" + quote(password, safe="")
    return parts._replace(netloc=f"{login}@{parts.netloc}").geturl()


def _apt_machine(proxy_url: str) -> str:
    # apt matches proxy logins only when the machine names the scheme ("Annotate with http://")
    parts = urlsplit(proxy_url)
    return f"{parts.scheme}://{parts.netloc}"


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _no_proxy(entries: Sequence[str]) -> str:
    return ",".join(entries)


def _plain_hosts(entries: Sequence[str]) -> list[str]:
    """no_proxy entries apt can express: exact host names and addresses (no CIDR, no .domain)."""
    return [e for e in entries if "/" not in e and not e.startswith(".") and "*" not in e]


def _env_value(name: str, value: str) -> str:
    if not _PLAIN_VALUE.match(value):
        raise NetworkConfigError(f"{name}: value has characters that need quoting: {value!r}")
    return f"{name}={value}"


# ----------------------------------------------------------------------------- renderers


def apt_proxy_conf(proxy_url: str, no_proxy: Sequence[str]) -> str:
    lines = [f"// {HEADER}", "// The login, if any, is in " + APT_PROXY_AUTH + " (0600)."]
    for scheme in ("http", "https"):
        lines.append(f'Acquire::{scheme}::Proxy "{_slash(proxy_url)}";')
        lines += [f'Acquire::{scheme}::Proxy::{h} "DIRECT";' for h in _plain_hosts(no_proxy)]
    return "\n".join(lines) + "\n"


def apt_proxy_auth(proxy_url: str, username: str, password: str) -> str:
    for label, value in (("proxy_username", username), ("proxy password", password)):
        if any(c.isspace() for c in value):
            raise NetworkConfigError(
                f"{label} contains whitespace, which apt's auth.conf cannot hold"
            )
    return f"# {HEADER}\nmachine {_apt_machine(proxy_url)}\nlogin {username}\npassword {password}\n"


def distro_source(mirror: str, security: str | None, os_id: str, os_version: str) -> str:
    """deb822 source for the distro archive and its security archive on the mirror."""
    try:
        codename, components, keyring = DISTROS[(os_id, os_version)]
    except KeyError:
        supported = ", ".join(f"{i} {v}" for i, v in DISTROS)
        raise NetworkConfigError(
            f"apt_mirror_url: no archive layout known for {os_id} {os_version} "
            f"(supported: {supported}); unset apt_mirror_url for this host"
        ) from None
    main = mirror.rstrip("/")
    if security is None:
        security = f"{main}-security" if os_id == "debian" else main
    stanzas = []
    for uri, suites in (
        (main, f"{codename} {codename}-updates"),
        (security.rstrip("/"), f"{codename}-security"),
    ):
        stanzas.append(
            f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: {components}\n"
            f"Signed-By: {keyring}\n"
        )
    return f"# {HEADER}\n# The distro's own sources are kept in {DISABLED_SOURCES_DIR}.\n" + (
        "\n".join(stanzas)
    )


def pip_conf(keys: NetworkKeys, with_ca: bool) -> str | None:
    lines = []
    if keys.pip_index_url:
        lines.append(f"index-url = {keys.pip_index_url}")
    if keys.pip_extra_index_urls:
        lines.append("extra-index-url =")
        lines += [f"    {url}" for url in keys.pip_extra_index_urls]
    if keys.pip_trusted_hosts:
        lines.append("trusted-host =")
        lines += [f"    {h}" for h in keys.pip_trusted_hosts]
    if with_ca:
        lines.append(f"cert = {SYSTEM_CA_BUNDLE}")
    if not lines:
        return None
    # proxy settings come from the environment (network.env), so no_proxy applies to pip too
    return f"# {HEADER}\n[global]\n" + "\n".join(lines) + "\n"


def npmrc(keys: NetworkKeys, with_ca: bool) -> str | None:
    lines = []
    if keys.npm_registry:
        lines.append(f"registry={_slash(keys.npm_registry)}")
    if with_ca:
        lines.append(f"cafile={SYSTEM_CA_BUNDLE}")
    if not lines:
        return None
    return f"# {HEADER}\n" + "\n".join(lines) + "\n"


def npm_auth(registry: str | None, token: str) -> str:
    parts = urlsplit(_slash(registry or DEFAULT_NPM_REGISTRY))
    if any(c.isspace() for c in token):
        raise NetworkConfigError("npm token contains whitespace; check npm_token_file")
    return f"# {HEADER}\n//{parts.netloc}{parts.path}:_authToken={token}\n"


def proxy_variables(proxy: str, no_proxy: Sequence[str]) -> list[tuple[str, str]]:
    listing = _no_proxy(no_proxy)
    return [
        ("http_proxy", proxy),
        ("https_proxy", proxy),
        ("HTTP_PROXY", proxy),
        ("HTTPS_PROXY", proxy),
        ("no_proxy", listing),
        ("NO_PROXY", listing),
    ]


def ca_variables() -> list[tuple[str, str]]:
    # Python requests/httpx and node ship their own CA lists; point them at the system one.
    return [
        ("REQUESTS_CA_BUNDLE", SYSTEM_CA_BUNDLE),
        ("SSL_CERT_FILE", SYSTEM_CA_BUNDLE),
        ("NODE_EXTRA_CA_CERTS", SYSTEM_CA_BUNDLE),
    ]


def npm_variables() -> list[tuple[str, str]]:
    # npm from nodesource, nvm or a tarball reads <prefix>/etc/npmrc, not Debian's /etc/npmrc
    return [("NPM_CONFIG_GLOBALCONFIG", NPMRC)]


def network_env(
    keys: NetworkKeys,
    secrets: NetworkSecrets,
    with_ca: bool,
    with_npm_auth: bool,
    with_npmrc: bool = False,
) -> str:
    """KEY=value lines readable by sh (`set -a; . FILE`) and systemd's EnvironmentFile."""
    variables: list[tuple[str, str]] = []
    if keys.proxy_url:
        login = proxy_with_login(keys.proxy_url, keys.proxy_username, secrets.proxy_password)
        variables += proxy_variables(login, keys.no_proxy)
    if with_ca:
        variables += ca_variables()
    if with_npmrc:
        variables += npm_variables()
    if with_npm_auth:
        variables.append(("NPM_CONFIG_USERCONFIG", NPM_AUTH))
    body = "\n".join(_env_value(n, v) for n, v in variables)
    return f"# {HEADER}\n# Root only: may hold the proxy login.\n{body}\n"


def profile_snippet(keys: NetworkKeys, with_ca: bool, with_npmrc: bool = False) -> str:
    variables: list[tuple[str, str]] = []
    if keys.proxy_url:
        variables += proxy_variables(keys.proxy_url, keys.no_proxy)
    if with_ca:
        variables += ca_variables()
    if with_npmrc:
        variables += npm_variables()
    exports = "\n".join(f"export {_env_value(n, v)}" for n, v in variables)
    return (
        f"# {HEADER}\n# No credentials here: readers allowed to (root) load them from "
        f"{NETWORK_ENV}.\n{exports}\n"
        f"if [ -r {NETWORK_ENV} ]; then set -a; . {NETWORK_ENV}; set +a; fi\n"
    )


def docker_proxy_dropin() -> str:
    # EnvironmentFile, not Environment=: `systemctl show docker` would print a login.
    return f"# {HEADER}\n[Service]\nEnvironmentFile={NETWORK_ENV}\n"


def docker_daemon_settings(keys: NetworkKeys) -> dict[str, list[str]]:
    """daemon.json entries this stage's keys ask for (merged by the Docker stage)."""
    return {"registry-mirrors": list(keys.docker_registry_mirrors)}


# ----------------------------------------------------------------------------- the plan


def network_plan(
    keys: NetworkKeys,
    secrets: NetworkSecrets,
    ca_certs: Sequence[CaCert],
    os_id: str,
    os_version: str,
) -> NetworkPlan:
    """Every file to write (content, mode) and every managed file to remove."""
    if secrets.proxy_password and not keys.proxy_username:
        raise NetworkConfigError(
            "proxy_username: a proxy password was given but proxy_username is not set"
        )
    if keys.proxy_username and not secrets.proxy_password:
        raise NetworkConfigError(
            "proxy_password_file: proxy_username is set but no password was found; set "
            "env AUTOGLM_PROXY_PASSWORD or proxy_password_file"
        )
    with_ca = bool(ca_certs)
    with_npm_auth = secrets.npm_token is not None
    files: list[ManagedFile] = []

    def add(path: str, text: str | None, mode: str = "644") -> None:
        if text is not None:
            files.append(ManagedFile(path, text.encode(), mode))

    if keys.proxy_url:
        add(APT_PROXY, apt_proxy_conf(keys.proxy_url, keys.no_proxy))
        if keys.proxy_username and secrets.proxy_password:
            add(
                APT_PROXY_AUTH,
                apt_proxy_auth(keys.proxy_url, keys.proxy_username, secrets.proxy_password),
                "600",
            )
        add(DOCKER_PROXY_DROPIN, docker_proxy_dropin())
    if keys.apt_mirror_url:
        add(
            APT_DISTRO_SOURCE,
            distro_source(keys.apt_mirror_url, keys.apt_security_mirror_url, os_id, os_version),
        )
    add(PIP_CONF, pip_conf(keys, with_ca))
    global_npmrc = npmrc(keys, with_ca)
    with_npmrc = global_npmrc is not None
    add(NPMRC, global_npmrc)
    if secrets.npm_token is not None:
        add(NPM_AUTH, npm_auth(keys.npm_registry, secrets.npm_token), "600")
    if keys.proxy_url or with_ca or with_npm_auth or with_npmrc:
        add(NETWORK_ENV, network_env(keys, secrets, with_ca, with_npm_auth, with_npmrc), "600")
    if keys.proxy_url or with_ca or with_npmrc:
        add(PROFILE_SNIPPET, profile_snippet(keys, with_ca, with_npmrc))
    names = sorted(c.name for c in ca_certs)
    if len(set(names)) != len(names):
        raise NetworkConfigError(f"ca_cert_files: two files install as the same name: {names}")
    for cert in ca_certs:
        files.append(ManagedFile(f"{CA_DIR}/{cert.name}", cert.pem))
    if names:
        add(CA_STATE, "".join(f"{n}\n" for n in names))
    written = {f.path for f in files}
    remove = [p for p in MANAGED_PATHS if p not in written]
    return NetworkPlan(files, remove, names)


def stale_ca_paths(previous_names: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """Certificates installed by an earlier run that are no longer configured."""
    safe = re.compile(r"^[A-Za-z0-9._-]+\.crt$")  # the state file is ours, but never trust a path
    return [f"{CA_DIR}/{n}" for n in previous_names if n not in wanted and safe.match(n)]


def source_moves(mirror_on: bool, present: dict[str, bool]) -> list[tuple[str, str]]:
    """(from, to) renames that disable the distro sources under a mirror, or restore them.

    `present` says which of DISTRO_SOURCES and their parked copies exist on the host.
    """
    moves = []
    for path in DISTRO_SOURCES:
        parked = parked_path(path)
        if mirror_on and present.get(path):
            moves.append((path, parked))
        elif not mirror_on and present.get(parked) and not present.get(path):
            moves.append((parked, path))
    return moves


def parked_path(path: str) -> str:
    return f"{DISABLED_SOURCES_DIR}/{posixpath.basename(path)}"
