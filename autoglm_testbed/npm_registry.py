"""A real npm registry (verdaccio) for sandbox hosts, caching the public registry.

verdaccio is installed once with the controller's npm into ~/.cache/autoglm-infra/
verdaccio/<version> (an npm `overrides` entry pins node-fetch: verdaccio-audit asks for
the `cjs` dist-tag, which some registries do not serve). Packages fetched through its
uplink (the controller's npm registry) are kept in ~/.cache/autoglm-infra/verdaccio/
storage, so only the first run reaches the public registry.

Reading packages needs a login token (`access: $authenticated`), except for the `npm`
package itself, which hosts without npm download to bootstrap the client:

    with NpmRegistryStandin(state_dir, "10.231.11.1") as registry:
        token = registry.add_user("ci", "password")  # what AUTOGLM_NPM_TOKEN holds
        registry.url                                  # http://10.231.11.1:PORT/
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Self

from autoglm_testbed.hosts import DEFAULT_CACHE_DIR
from autoglm_testbed.servers import HttpReady, LoopbackServer, StandinLifecycle, free_port

VERDACCIO_VERSION = "6.8.0"  # newest that runs on node 20 (6.9+ wants node 22)
CACHE_DIR = DEFAULT_CACHE_DIR.parent / "verdaccio"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def npm_upstream() -> str:
    """The registry the controller's npm uses (its uplink)."""
    out = subprocess.run(
        ["npm", "config", "get", "registry"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out if out.startswith("http") else "https://registry.npmjs.org/"


def ensure_verdaccio(version: str = VERDACCIO_VERSION, cache_dir: Path = CACHE_DIR) -> Path:
    """Path of the verdaccio binary, installed with npm on first use."""
    if not shutil.which("npm"):
        raise RuntimeError("npm is needed on the controller to install verdaccio")
    root = cache_dir / version
    binary = root / "node_modules" / ".bin" / "verdaccio"
    if (root / ".complete").exists() and binary.exists():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "autoglm-verdaccio",
        "version": "1.0.0",
        "private": True,
        "dependencies": {"verdaccio": version},
        "overrides": {"node-fetch": "2.7.0"},
    }
    (root / "package.json").write_text(json.dumps(manifest, indent=1) + "\n")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=root, check=True
    )
    (root / ".complete").write_text(version + "\n")
    return binary


class NpmRegistryStandin(StandinLifecycle):
    def __init__(self, state_dir: Path, bind: str, port: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.bind = bind
        self.port = port or free_port(bind)
        self._server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}/"

    def config(self, storage: Path, upstream: str) -> str:
        """verdaccio's config.yaml (JSON is valid YAML)."""
        proxied = {"proxy": "upstream", "publish": "$authenticated"}
        doc = {
            "storage": str(storage),
            "auth": {"htpasswd": {"file": str(self.state_dir / "htpasswd"), "max_users": 100}},
            "uplinks": {"upstream": {"url": upstream}},
            "packages": {
                "npm": {"access": "$all", **proxied},
                "@*/*": {"access": "$authenticated", **proxied},
                "**": {"access": "$authenticated", **proxied},
            },
            "listen": f"{self.bind}:{self.port}",
            "middlewares": {"audit": {"enabled": False}},
            "web": {"enable": False},
            "log": {"type": "stdout", "format": "pretty", "level": "http"},
        }
        return json.dumps(doc, indent=1) + "\n"

    def start(self) -> Self:
        binary = ensure_verdaccio()
        storage = CACHE_DIR / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "htpasswd").unlink(missing_ok=True)
        config = self.state_dir / "config.yaml"
        config.write_text(self.config(storage, npm_upstream()))
        self._server = LoopbackServer(
            [str(binary), "--config", str(config)],
            log_path=self.state_dir / "verdaccio.log",
            ready=HttpReady(f"{self.url}-/ping"),
            name="verdaccio",
            start_timeout=60,
        )
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def add_user(self, name: str, password: str) -> str:
        """Register a user and return its token (kept out of any command line)."""
        body = json.dumps({"name": name, "password": password}).encode()
        request = urllib.request.Request(
            f"{self.url}-/user/org.couchdb.user:{name}",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with _NO_PROXY.open(request, timeout=30) as response:
            token: str = json.load(response)["token"]
        return token

    def requests_seen(self) -> list[str]:
        """verdaccio's http log lines ('GET /left-pad', with status), newest last."""
        try:
            text = (self.state_dir / "verdaccio.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if "http <--" in line]
