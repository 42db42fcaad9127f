"""A signed apt repository built under `workdir/www` and served over HTTP on `bind`.

Base of the NVIDIA and container-toolkit repository stand-ins. The server records a
pidfile, so a detached one (the demo's) can be stopped by a later process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Self

from autoglm_testbed.apt_repo import SigningKey
from autoglm_testbed.servers import (
    HttpReady,
    LoopbackServer,
    free_port,
    port_is_free,
    stop_pidfile,
)


class RepoSite:
    name = "apt-repo"

    def __init__(self, workdir: Path, bind: str, key_dir: Path) -> None:
        self.workdir = workdir
        self.bind = bind
        self.key = SigningKey.load_or_create(key_dir)
        self.port = 0
        self.server: LoopbackServer | None = None

    @property
    def www(self) -> Path:
        return self.workdir / "www"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "server.pid"

    def serve(self, ready_path: str, detached: bool = False, preferred_port: int = 0) -> Self:
        """Serve `www`; a stable `preferred_port` keeps the hosts' apt sources unchanged
        across demo runs (a free port is taken when it is busy)."""
        free = preferred_port and port_is_free(self.bind, preferred_port)
        self.port = preferred_port if free else free_port(self.bind)
        argv = [sys.executable, "-m", "autoglm_testbed.static_http", "--root",
                str(self.www), "--bind", self.bind, "--port", str(self.port),
                "--access-log", str(self.workdir / "access.log")]  # fmt: skip
        self.server = LoopbackServer(
            argv, log_path=self.workdir / "server.log", name=self.name,
            detached=detached, pidfile=self.pidfile,
            ready=HttpReady(f"http://{self.bind}:{self.port}/{ready_path}"),
        )  # fmt: skip
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        elif self.pidfile.exists():
            stop_pidfile(self.pidfile)
