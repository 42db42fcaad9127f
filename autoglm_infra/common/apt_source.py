"""deb822 apt sources for the repositories the stages add, each signed by its own keyring."""

from __future__ import annotations


def deb822_source(
    what: str,
    repo_url: str,
    keyring: str,
    suite: str = "/",
    components: str = "",
    arch: str = "",
) -> str:
    """A `.sources` file; flat repositories (NVIDIA's) have `Suites: /` and no components."""
    lines = [
        f"# Managed by autoglm-infra ({what}).",
        "Types: deb",
        f"URIs: {repo_url}",
        f"Suites: {suite}",
    ]
    if components:
        lines.append(f"Components: {components}")
    if arch:
        lines.append(f"Architectures: {arch}")
    lines.append(f"Signed-By: {keyring}")
    return "\n".join(lines) + "\n"
