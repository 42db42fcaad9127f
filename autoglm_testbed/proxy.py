"""A real forward proxy with basic auth (proxy.py from PyPI) for the sandbox hosts.

proxy.py answers a wrong or missing login with 407 (Debian 12's tinyproxy answers 401),
for plain HTTP and for CONNECT. Its access log proves traffic went through it. The
login is handed to the process in its environment, never on its command line, so the
tests that look for the secret in every process's argv see none here either.

    with ProxyStandin(state_dir, "10.231.11.1", "alice", "pw") as proxy:
        proxy.url            # http://10.231.11.1:PORT (no login: that goes in secrets)
        proxy.access_lines() # "GET 10.231.11.1:2510/simple/six/ - 200 OK - ..." lines
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Self

from autoglm_testbed.hosts import DEFAULT_CACHE_DIR
from autoglm_testbed.servers import LoopbackServer, StandinLifecycle, TcpReady, free_port

PROXYPY_VERSION = "2.4.10"
CACHE_DIR = DEFAULT_CACHE_DIR.parent / "proxypy"
_LAUNCH = "import os, proxy; proxy.main(basic_auth=os.environ.pop('AUTOGLM_STANDIN_PROXY_LOGIN'))"
_ACCESS = re.compile(r"server\.access_log:\d+ - \S+ - (?P<line>.*)$")


def ensure_proxypy(cache_dir: Path = CACHE_DIR, version: str = PROXYPY_VERSION) -> Path:
    """python of a venv holding proxy.py==version, built once from PyPI and cached."""
    venv = cache_dir / f"venv-{version}"
    python = venv / "bin" / "python"
    stamp = venv / ".complete"
    if stamp.exists():
        return python
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"proxy.py=={version}"],
        check=True,
    )  # fmt: skip
    stamp.write_text(version + "\n")
    return python


class ProxyStandin(StandinLifecycle):
    """proxy.py with basic auth listening on `bind` (the sandbox bridge address)."""

    def __init__(
        self, state_dir: Path, bind: str, username: str, password: str, port: int | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        self.bind = bind
        self.port = port or free_port(bind)
        self.log_path = self.state_dir / "proxy.log"
        self._login = f"{username}:{password}"
        self._server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def start(self) -> Self:
        python = ensure_proxypy()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        argv = [
            str(python), "-c", _LAUNCH, "--hostname", self.bind, "--port", str(self.port),
            "--num-workers", "1", "--num-acceptors", "1", "--log-file", str(self.log_path),
        ]  # fmt: skip
        self._server = LoopbackServer(
            argv,
            log_path=self.state_dir / "proxy.out",
            ready=TcpReady(self.bind, self.port),
            name="proxy.py",
            env={"AUTOGLM_STANDIN_PROXY_LOGIN": self._login},
        )
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    @property
    def pids(self) -> set[int]:
        """The proxy's own processes (leader and its worker), to tell them apart in scans."""
        if self._server is None or self._server.pid is None:
            return set()
        leader = self._server.pid
        found = {leader}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[2] == str(leader):  # same process group
                found.add(int(stat.parent.name))
        return found

    def access_lines(self) -> list[str]:
        """One line per proxied request: 'GET host:port/path - 200 OK - N bytes - T ms'."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [m["line"] for line in text.splitlines() if (m := _ACCESS.search(line))]

    def auth_failures(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count("ProxyAuthenticationFailed")
        except FileNotFoundError:
            return 0
