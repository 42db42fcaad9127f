"""Prometheus's own `promtool` (Debian's prometheus package), to validate scraped metrics.

Only the binary is taken: `apt-get download` + `dpkg -x` into the shared cache, keyed by
the package version, so no Prometheus server is installed or started on the controller.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from autoglm_testbed.hosts import DEFAULT_CACHE_DIR

CACHE = DEFAULT_CACHE_DIR.parent / "promtool"
PACKAGE = "prometheus"


def promtool() -> Path:
    """The path of promtool from the candidate version of Debian's prometheus package."""
    version = (
        subprocess.run(["apt-cache", "policy", PACKAGE], capture_output=True, text=True, check=True)
        .stdout.split("Candidate:")[1]
        .split()[0]
    )
    binary = CACHE / version.replace(":", "_") / "promtool"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        # _apt cannot write a root-owned temp dir: the download runs unsandboxed, as root
        subprocess.run(
            ["apt-get", "download", "-q", f"{PACKAGE}={version}"],
            cwd=tmp, check=True, capture_output=True,
        )  # fmt: skip
        (deb,) = Path(tmp).glob("*.deb")
        subprocess.run(["dpkg", "-x", str(deb), f"{tmp}/root"], check=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f"{tmp}/root/usr/bin/promtool", f"{binary}.tmp")
        Path(f"{binary}.tmp").rename(binary)
    return binary
