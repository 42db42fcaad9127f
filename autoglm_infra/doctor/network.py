"""The doctor's reachability checks: is every configured proxy and mirror answering? Pure.

Probed from the host (where apt, pip and the model pull run), through the configured
proxy with the login the network stage gave the host. Any HTTP answer counts as reachable,
except the proxy's own 407 (its login was refused); a refused or timed-out connection fails.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from autoglm_infra.common.checks import Check, Status
from autoglm_infra.config.schema import Settings
from autoglm_infra.doctor.probe import Reach
from autoglm_infra.stages.model.lock import LockError, download_url, lock_file_path, read_lock

# kind -> (key to fix, failure status): the model hub is only needed for a (re)pull.
KEYS: dict[str, tuple[str, Status]] = {
    "proxy": ("proxy_url", "fail"),
    "pip index": ("pip_index_url", "fail"),
    "apt mirror": ("apt_mirror_url", "fail"),
    "npm registry": ("npm_registry", "fail"),
    "docker mirror": ("docker_registry_mirrors", "fail"),
    "model hub": ("hub_endpoint", "warn"),
    "model download": ("hub_endpoint", "warn"),
}
HF_CDN_SUFFIX = ".hf.co"  # cas-bridge.xethub.hf.co, cdn-lfs*.hf.co, *.cdn.hf.co


def download_probe_url(settings: Settings, lock_root: Path) -> str | None:
    """Where the pull fetches the lock's largest file (LFS: the hub redirects it to its CDN),
    from the stored lock only: the doctor asks no hub API. None without a stored lock."""
    path = lock_file_path(lock_root / settings.model_lock_dir, settings.model_source,
                          settings.model_repo, settings.model_revision)  # fmt: skip
    try:
        lock = read_lock(path)
    except (OSError, LockError):
        return None
    biggest = max(lock.files, key=lambda f: f.size)
    return download_url(lock, settings.hub_endpoint, biggest.path)


def reach_targets(settings: Settings, download: str | None = None) -> list[tuple[str, str]]:
    """(kind, url) of every configured endpoint; unset keys (public defaults) are not probed.

    `download`: one model file's URL (download_probe_url), probed one redirect deep.
    """
    targets = []
    if settings.proxy_url:
        targets.append(("proxy", settings.proxy_url))
    if settings.pip_index_url and settings.serve_mode == "venv":
        targets.append(("pip index", settings.pip_index_url))
    if settings.apt_mirror_url:
        targets.append(("apt mirror", settings.apt_mirror_url))
    if settings.npm_registry:
        targets.append(("npm registry", settings.npm_registry))
    targets += [("docker mirror", url) for url in settings.docker_registry_mirrors]
    targets.append(("model hub", settings.hub_endpoint))
    if download:
        targets.append(("model download", download))
    return targets


def proxy_env(settings: Settings) -> dict[str, str]:
    """The proxy without its login, for hosts the network stage has not converged yet."""
    if not settings.proxy_url:
        return {}
    return {
        "http_proxy": settings.proxy_url,
        "https_proxy": settings.proxy_url,
        "no_proxy": ",".join(settings.no_proxy),
    }


def through_proxy(url: str, no_proxy: Sequence[str]) -> bool:
    """Whether the probe (urllib, like pip) sends `url` through the proxy under no_proxy.

    urllib matches exact hosts and domain suffixes (".corp" or "corp"); CIDRs never match.
    """
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    for entry in no_proxy:
        name = entry.strip().lower().lstrip(".")
        if name == "*" or (name and (host == name or host.endswith("." + name))):
            return False
    return True


def reach_checks(
    targets: Sequence[tuple[str, str]], found: Sequence[Reach], no_proxy: Sequence[str] = ()
) -> list[Check]:
    by_target = {(r.kind, r.url): r for r in found}
    proxy = next((url for kind, url in targets if kind == "proxy"), None)
    proxy_down = (
        proxy is not None
        and not by_target.get(("proxy", proxy), Reach("proxy", proxy, "error")).answered
    )
    checks = []
    for kind, url in targets:
        key, bad = KEYS[kind]
        name = f"reach {kind}"
        result = by_target.get((kind, url))
        if result is None:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{url}: not probed (python3 missing on the host?)",
                    "apt-get install python3-minimal",
                )
            )
        elif result.result == "http 407" and proxy is not None and through_proxy(url, no_proxy):
            checks.append(
                Check(
                    name,
                    bad,
                    f"{url}: proxy_url {proxy} refused the host's login (HTTP 407)",
                    "check proxy_username and the password (AUTOGLM_PROXY_PASSWORD or "
                    "proxy_password_file), then converge deploys/network.py",
                )
            )
        elif kind == "model download" and " -> " in result.result:
            checks.append(_landed(name, bad, url, result.result))
        elif result.answered:
            checks.append(Check(name, "ok", f"{url} answers ({result.result})"))
        elif kind == "proxy":
            checks.append(
                Check(
                    name,
                    bad,
                    f"proxy_url {url} does not answer: {result.result.removeprefix('error ')}; "
                    "apt, pip, npm and Docker on this host go through it",
                    f"start the proxy at {url} (or check the firewall between the host and "
                    "it), or fix proxy_url / unset it",
                )
            )
        elif proxy_down and proxy is not None and through_proxy(url, no_proxy):
            checks.append(
                Check(
                    name,
                    bad,
                    f"{url} unreachable through proxy_url {proxy}, which does not answer",
                    f"start the proxy at {proxy} first (see reach proxy); or add the host to "
                    f"no_proxy if it must be reached directly",
                )
            )
        else:
            checks.append(
                Check(
                    name,
                    bad,
                    f"{url} unreachable from the host: {result.result.removeprefix('error ')}",
                    f"check that it runs and that the host can reach it "
                    f"(firewall, proxy, no_proxy), or fix {key}",
                )
            )
    return checks


def _landed(name: str, bad: Status, url: str, result: str) -> Check:
    """A download the endpoint redirected: the host must reach where it lands too."""
    first, _, rest = result.partition(" -> ")
    site, _, answer = rest.rpartition(": ")
    host = urllib.parse.urlsplit(site).hostname or site
    endpoint = urllib.parse.urlsplit(url).hostname or url
    hf_cdn = host.endswith(HF_CDN_SUFFIX) and not (
        endpoint == "huggingface.co" or endpoint.endswith((".huggingface.co", HF_CDN_SUFFIX))
    )
    whose = " (Hugging Face's CDN: the mirror does not serve the files itself)" if hf_cdn else ""
    if answer.startswith("error"):
        return Check(
            name,
            bad,
            f"{endpoint} sends downloads to {host}{whose} ({first}), which this host cannot "
            f"reach: {answer.removeprefix('error ')}",
            f"allow {host} through the firewall or proxy (no_proxy), or set hub_endpoint to "
            "a mirror that serves the files itself",
        )
    return Check(name, "ok", f"{endpoint} sends downloads to {host}{whose}: {answer}")
