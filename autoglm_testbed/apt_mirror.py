"""A real apt caching mirror of the Debian archive (apt-cacher-ng from Debian) for sandbox hosts.

Hosts use it as a mirror base URL (`apt_mirror_url`): http://BIND:PORT/debian and
http://BIND:PORT/debian-security are remapped to the archive the controller's own apt
uses. Downloads are cached under ~/.cache/autoglm-infra/apt-cacher-ng (keyed by URL,
as apt-cacher-ng does), so only the first run fetches from the Debian archive.

    with AptMirrorStandin(state_dir, "10.231.11.1") as mirror:
        mirror.url                    # http://10.231.11.1:PORT/debian
        mirror.served()    # (client, path) it answered, e.g. ("10.231.11.1", "debrep/pool/...")
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Self

from autoglm_testbed.hosts import DEFAULT_CACHE_DIR, read_mirrors
from autoglm_testbed.servers import (
    HttpReady,
    LoopbackServer,
    StandinLifecycle,
    port_is_free,
)

CACHE_DIR = DEFAULT_CACHE_DIR.parent / "apt-cacher-ng"
BINARY = "/usr/sbin/apt-cacher-ng"


def low_free_port(bind: str) -> int:
    """A free port below 32768: apt-cacher-ng 3.7 cannot bind higher ones ("Error resolving
    address for binding"), and the kernel hands out ephemeral ports from 32768 up."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port_is_free(bind, port):
            return port
    raise RuntimeError(f"no free port in 20000-32000 on {bind}")


class AptMirrorStandin(StandinLifecycle):
    def __init__(self, state_dir: Path, bind: str, port: int | None = None) -> None:
        """`port` is taken at start when free (a stable one keeps the hosts' sources
        unchanged across demo runs), else a free low port."""
        self.state_dir = Path(state_dir)
        self.bind = bind
        self.requested_port = port
        self.port = port or 0
        self._server: LoopbackServer | None = None

    @property
    def base(self) -> str:
        return f"http://{self.bind}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/debian"

    @property
    def security_url(self) -> str:
        return f"{self.base}/debian-security"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "log" / "apt-cacher.log"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "server.pid"

    def start(self, detached: bool = False) -> Self:
        """Serve; `detached` keeps it up after this process (the demo), see stop()."""
        if not Path(BINARY).exists() and not shutil.which("apt-cacher-ng"):
            raise RuntimeError("apt-cacher-ng is not installed: apt-get install apt-cacher-ng")
        wanted = self.requested_port
        if wanted and port_is_free(self.bind, wanted):
            self.port = wanted
        else:
            self.port = low_free_port(self.bind)
        main, security = read_mirrors()
        for sub in ("log", "run"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self.log_file.unlink(missing_ok=True)
        argv = [
            BINARY, "-c", "/etc/apt-cacher-ng", "ForeGround=1", f"Port={self.port}",
            f"BindAddress={self.bind}", f"CacheDir={CACHE_DIR}",
            f"LogDir={self.state_dir / 'log'}", f"PidFile={self.state_dir / 'run' / 'pid'}",
            f"SocketPath={self.state_dir / 'run' / 'socket'}",
            # the stock remap points at ftp.debian.org; use what the controller's apt uses
            f"Remap-debrep=file:deb_mirror*.gz /debian ; {main}/",
            f"Remap-secdeb=security.debian.org /debian-security ; {security}/",
            "ExThreshold=0",
        ]  # fmt: skip
        self._server = LoopbackServer(
            argv,
            log_path=self.state_dir / "apt-cacher-ng.out",
            ready=HttpReady(f"{self.base}/acng-report.html"),
            name="apt-cacher-ng",
            detached=detached,
            pidfile=self.pidfile,
        )
        self._server.start()
        return self

    def served(self) -> list[tuple[str, str]]:
        """(client address, path) of every file it delivered since start ('O' log lines).

        The client is the proxy's address when a host reached the mirror through a proxy.
        """
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        # time|O|bytes|client|path  (I = fetched upstream, O = delivered)
        return [(f[3], f[4]) for line in lines if len(f := line.split("|")) >= 5 and f[1] == "O"]
