"""The smoke test as a check: it reports, it never counts as a change."""

from __future__ import annotations

import json
import shlex
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

from autoglm_infra.pyinfra_ext.operations import fail_host
from autoglm_infra.pyinfra_ext.state_reads import early_check

# said of a smoke test taken from the converge lock request (state_reads.early_check)
_WHEN = " (tested when the host connected; this run changed nothing since)"

SMOKE_SOURCE = Path(__file__).resolve().parents[2] / "host_tools" / "smoke.py"


def smoke_command(args: Sequence[str]) -> str:
    """Run the standard-library smoke script with the host's python3, fed on stdin.

    Nothing is installed for it, and the API key stays in its root-only file on the host.
    """
    script = SMOKE_SOURCE.read_text()
    quoted = " ".join(shlex.quote(a) for a in args)
    return f"python3 - {quoted} <<'AUTOGLM_SMOKE_EOF' 2>&1 || true\n{script}\nAUTOGLM_SMOKE_EOF"


def parse_smoke(output: str) -> dict[str, Any]:
    for line in reversed(output.strip().splitlines()):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and "ok" in result:
            return result
    return {"ok": False, "error": f"smoke test printed no result: {output.strip()[-300:]}"}


@operation()
def smoke_test(args: Sequence[str]) -> Generator[Any, None, None]:
    """/health, /v1/models and a chat completion on the host; fail the host when broken.

    Runs at execution time, after the service stage started or restarted the server; a
    run that changed nothing takes the answer of the test run at connect time.

    + args: arguments of host_tools/smoke.py (URL, model, --chat ...)

    **Example:**

    .. code:: python

        smoke_test(name="smoke", args=["--base-url", "http://127.0.0.1:8000", "--chat"])
    """
    yield from ()  # a check: never a change
    command = smoke_command(args)
    early = early_check(command)  # run at connect, nothing changed since: still true
    output = "\n".join(early) if early is not None else host.get_fact(Command, command)
    result = parse_smoke(str(output or ""))
    if not result.get("ok"):
        yield fail_host(f"smoke test failed: {result.get('error')}")
        return
    if "chat_latency_s" in result:
        host.noop(
            f"endpoint healthy; chat completion in {result['chat_latency_s']} s: "
            f"{result.get('answer', '')!r}{_WHEN if early is not None else ''}"
        )
    else:
        host.noop(
            f"endpoint healthy; models {result.get('models')} (chat not requested)"
            f"{_WHEN if early is not None else ''}"
        )
