"""Keys of the proxy and mirrors stage: where every later download goes.

Credentials never live here: the proxy password and the npm token are read on the
controller from an environment variable or a private file (controller_secrets.py);
these keys only name the user and the file.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Annotated

from pydantic import AfterValidator, model_validator

from autoglm_infra.config.fields import HttpUrl, Keys, ProxyUrl, key

PROXY_PASSWORD_ENV = "AUTOGLM_PROXY_PASSWORD"
NPM_TOKEN_ENV = "AUTOGLM_NPM_TOKEN"

_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^{_HOST_LABEL}(\.{_HOST_LABEL})*$")


def no_proxy_entry(value: str) -> str:
    if not value or any(c.isspace() for c in value) or "," in value:
        raise ValueError("entries must be non-empty host names, domains or CIDRs without spaces")
    return value


def trusted_host(value: str) -> str:
    """pip's --trusted-host: a host name or IP, optionally with :port."""
    if "/" in value:
        raise ValueError(f"{value!r} must be a host name or IP with an optional :port, not a URL")
    host, sep, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if sep and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r}: port must be 1-65535")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not _HOST_NAME.match(host):
            raise ValueError(
                f"{value!r} must be a host name or IP with an optional :port, not a URL"
            ) from None
    return value


def user_name(value: str) -> str:
    if not value or any(c.isspace() or c in ":@/" for c in value):
        raise ValueError("must be a non-empty user name without spaces, ':', '@' or '/'")
    return value


def controller_file(value: str) -> str:
    """A file on the controller: absolute, or ~/... for the user running pyinfra."""
    if value.startswith("~/"):
        return value
    if not value.startswith("/"):
        raise ValueError("must be an absolute path (or ~/...) on the controller")
    return value


ControllerFile = Annotated[str, AfterValidator(controller_file)]
TrustedHost = Annotated[str, AfterValidator(trusted_host)]


class NetworkKeys(Keys):
    proxy_url: ProxyUrl | None = key(
        None,
        "HTTP(S) proxy for apt, pip, npm, Docker and the shell; credentials never go here.",
        "http(s) URL without user:pass, or None",
    )
    no_proxy: list[Annotated[str, AfterValidator(no_proxy_entry)]] = key(
        ["localhost", "127.0.0.1", "::1"],
        "Hosts, domains and CIDRs that bypass proxy_url.",
        "list of host names / domains / CIDRs",
    )
    proxy_username: Annotated[str, AfterValidator(user_name)] | None = key(
        None,
        "User for proxy_url's basic auth; the password comes from env "
        f"{PROXY_PASSWORD_ENV} or proxy_password_file, never from group_data.",
        "user name or None",
    )
    proxy_password_file: ControllerFile | None = key(
        None,
        f"File on the controller (chmod 600) holding the proxy password; env "
        f"{PROXY_PASSWORD_ENV} wins over it.",
        "absolute path or ~/... on the controller, or None",
    )
    ca_cert_files: list[ControllerFile] = key(
        [],
        "PEM CA certificates on the controller to add to every host's trust store "
        "(e.g. a TLS-inspecting proxy's CA).",
        "list of absolute paths (or ~/...) on the controller",
    )
    apt_mirror_url: HttpUrl | None = key(
        None,
        "Mirror of the distro archive (e.g. https://mirrors.tuna.tsinghua.edu.cn/debian); "
        "replaces the distro's apt sources. None keeps them.",
        "http(s) URL or None",
    )
    apt_security_mirror_url: HttpUrl | None = key(
        None,
        "Mirror of the security archive; None derives it: Debian <apt_mirror_url>-security, "
        "Ubuntu apt_mirror_url itself.",
        "http(s) URL or None",
    )
    pip_index_url: HttpUrl | None = key(
        None,
        "PyPI mirror used for the venv; None uses pip's default index.",
        "http(s) URL or None",
    )
    pip_extra_index_urls: list[HttpUrl] = key(
        [], "Further package indexes pip searches after pip_index_url.", "list of http(s) URLs"
    )
    pip_trusted_hosts: list[TrustedHost] = key(
        [],
        "Hosts pip may reach over plain http or with an unverified certificate.",
        "list of host or host:port",
    )
    npm_registry: HttpUrl | None = key(
        None, "npm registry mirror; None uses npm's default registry.", "http(s) URL or None"
    )
    npm_token_file: ControllerFile | None = key(
        None,
        f"File on the controller (chmod 600) holding the npm registry token; env "
        f"{NPM_TOKEN_ENV} wins over it.",
        "absolute path or ~/... on the controller, or None",
    )
    docker_registry_mirrors: list[HttpUrl] = key(
        [],
        "Docker Hub pull-through mirrors for the Docker daemon (registry-mirrors).",
        "list of http(s) URLs",
    )

    @model_validator(mode="after")
    def _check_network_keys(self) -> NetworkKeys:
        if self.proxy_username and not self.proxy_url:
            raise ValueError("proxy_username: is set but proxy_url is not; set proxy_url too")
        if self.proxy_password_file and not self.proxy_username:
            raise ValueError(
                "proxy_password_file: a password needs proxy_username; set proxy_username"
            )
        if self.apt_security_mirror_url and not self.apt_mirror_url:
            raise ValueError(
                "apt_security_mirror_url: is set but apt_mirror_url is not; set both or neither"
            )
        names = [posixpath.basename(p) for p in self.ca_cert_files]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise ValueError(
                f"ca_cert_files: file names must be unique (installed by name): {', '.join(clash)}"
            )
        return self
