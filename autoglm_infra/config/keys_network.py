"""Keys of the proxy and mirrors stage: where every later download goes."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from autoglm_infra.config.fields import HttpUrl, Keys, ProxyUrl, key


def no_proxy_entry(value: str) -> str:
    if not value or any(c.isspace() for c in value) or "," in value:
        raise ValueError("entries must be non-empty host names, domains or CIDRs without spaces")
    return value


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
    pip_index_url: HttpUrl | None = key(
        None,
        "PyPI mirror used for the venv; None uses pip's default index.",
        "http(s) URL or None",
    )
    npm_registry: HttpUrl | None = key(
        None, "npm registry mirror; None uses npm's default registry.", "http(s) URL or None"
    )
