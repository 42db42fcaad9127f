"""Importing the package changes nothing about the importing process.

pyinfra's CLI package (pyinfra_cli) monkey-patches sockets and ssl with gevent when it is
imported. A module of ours importing it at the top made every process that imported that
module (pytest, through the operation-case generator) patched: from then on `requests`
over TLS failed in the sandbox tests that ran after it, while a test file run alone passed.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil
import autoglm_infra
for module in pkgutil.walk_packages(autoglm_infra.__path__, "autoglm_infra."):
    if not module.name.endswith(".__main__"):
        importlib.import_module(module.name)
import gevent.monkey
patched = [m for m in ("socket", "ssl", "threading", "time") if gevent.monkey.is_module_patched(m)]
print("patched:", ",".join(patched) or "none")
"""


def test_importing_every_module_patches_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("patched: none"), done.stdout + done.stderr[-2000:]


def test_the_converge_imports_no_http_client() -> None:
    """`requests` (50 ms of every run) is imported where a key is fetched or a hub asked,
    which a no-op converge with its keys cached never does."""
    check = "import sys, autoglm_infra.stages.deploy; print('requests' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"
