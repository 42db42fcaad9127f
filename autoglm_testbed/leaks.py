"""Where a secret could leak on a sandbox host: argv (host and controller) and written files.

`ArgvWatch` samples every process's command line on both sides while a converge runs;
`files_holding_secrets` lists the files written since the watch started that hold one.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from autoglm_testbed.hosts import SandboxHost


def on_host(host: SandboxHost, command: str, stdin: str = "", timeout: float = 300) -> str:
    """Run `command` as root on the host, feeding `stdin` (so secrets stay off argv)."""
    result = subprocess.run(
        host.ssh_argv(command), input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"`{command}` exited {result.returncode}: {result.stderr[-1500:]}")
    return result.stdout


class ArgvWatch:
    """Samples every process's argv on the host and the controller while a converge runs."""

    SCRIPT = (
        "mkdir -p /run/scan && umask 077 && cat > /run/scan/patterns && : > /run/scan/hits && "
        "touch /run/scan/stamp /run/scan/on\n"
        "(while [ -e /run/scan/on ]; do grep -a -l -F -f /run/scan/patterns /proc/[0-9]*/cmdline"
        " >> /run/scan/hits 2>/dev/null; sleep 0.02; done; touch /run/scan/done)"
        " </dev/null >/dev/null 2>&1 &\n"
    )

    def __init__(self, host: SandboxHost, needles: list[str]) -> None:
        self.host = host
        self.needles = needles
        self.controller_hits: list[str] = []
        self.host_hits = ""
        self._running = False
        self._thread = threading.Thread(target=self._scan_controller, daemon=True)

    def _scan_controller(self) -> None:
        while self._running:
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    raw = cmdline.read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if any(n in raw for n in self.needles):
                    self.controller_hits.append(raw.replace("\0", " ")[:200])
            time.sleep(0.01)

    def __enter__(self) -> ArgvWatch:
        on_host(self.host, self.SCRIPT, stdin="\n".join(self.needles) + "\n")
        self._running = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        # the scan's last pass may still be writing: wait until the loop itself has ended
        self.host_hits = on_host(
            self.host,
            "rm -f /run/scan/on; timeout 120 sh -c 'until [ -e /run/scan/done ]; do sleep 0.05;"
            " done' && cat /run/scan/hits",
        )


def files_holding_secrets(host: SandboxHost) -> list[str]:
    """'mode owner path' of every file written since the scan stamp that holds a secret."""
    return on_host(
        host,
        "find / \\( -path /proc -o -path /sys -o -path /dev -o -path /run/scan \\) -prune "
        "-o -type f -newer /run/scan/stamp -print0 | "
        "xargs -0 -r grep -l -F -f /run/scan/patterns | xargs -r stat -c '%a %U %n' || true",
    ).split("\n")
