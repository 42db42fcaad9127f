#!/usr/bin/python3
"""Start-up health gate of autoglm-serve.service (run as ExecStartPost=).

Usage: autoglm-health-gate URL DEADLINE_SECONDS

Waits until GET URL answers 200 and exits 0; exits 1 when the deadline passes or the
engine (systemd's $MAINPID) exits first, so `systemctl start` -- and the converge that
ran it -- fails instead of reporting a crash-looping engine as started. The engine has no
sd_notify support, which is why a poll is needed. Standard library only; managed by
autoglm-infra (deploys/service.py), local edits are overwritten.
"""

import os
import sys
import time
import urllib.error
import urllib.request


def main() -> int:
    url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
    main_pid = os.environ.get("MAINPID", "")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    started, last_report, last_error = time.monotonic(), 0.0, "no answer yet"
    while time.monotonic() < deadline:
        if main_pid and not os.path.exists(f"/proc/{main_pid}"):
            print(f"health gate: engine (pid {main_pid}) exited before {url} answered")
            return 1
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    waited = time.monotonic() - started
                    print(f"health gate: {url} answered 200 after {waited:.0f} s")
                    return 0
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except OSError as exc:
            last_error = str(getattr(exc, "reason", exc))
        if time.monotonic() - last_report >= 30:
            waited = time.monotonic() - started
            print(f"health gate: waiting for {url} ({waited:.0f} s, {last_error})", flush=True)
            last_report = time.monotonic()
        time.sleep(1)
    print(f"health gate: {url} did not answer 200 within {sys.argv[2]} s ({last_error})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
