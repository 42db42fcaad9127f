"""The doctor's checks of the running endpoint: systemd unit, /health, containers. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from autoglm_infra.common.checks import Check
from autoglm_infra.doctor.probe import Container


def unit_check(unit: str, props: Mapping[str, str]) -> Check:
    """failed, crash-looping (auto-restart) or stopped units fail; restarts are a warning."""
    name = "service unit"
    if not props:
        return Check(name, "skip", "systemctl does not answer (systemd not PID 1)")
    load = props.get("LoadState", "")
    if load != "loaded":
        return Check(
            name,
            "fail",
            f"{unit} is {load or 'unknown'}",
            "converge the host: pyinfra INVENTORY deploys/full.py",
        )
    active, sub = props.get("ActiveState", ""), props.get("SubState", "")
    result, restarts = props.get("Result", ""), props.get("NRestarts", "0")
    evidence = f"{unit}: {active} ({sub}), Result={result}, NRestarts={restarts}"
    logs = f"journalctl -u {unit} -n 100 shows why"
    if active == "failed":
        return Check(
            name,
            "fail",
            evidence,
            f"{logs}; fix the cause, then "
            f"`systemctl reset-failed {unit}` and re-run deploys/full.py",
        )
    if sub == "auto-restart" or (active == "activating" and restarts not in ("", "0")):
        return Check(
            name,
            "fail",
            f"crash loop: {evidence}",
            f"{logs}; the unit ends in 'failed' after service_start_limit_burst starts",
        )
    if active != "active":
        return Check(
            name, "fail", evidence, f"systemctl start {unit} (or re-run deploys/full.py); {logs}"
        )
    if restarts not in ("", "0"):
        return Check(name, "warn", evidence, f"it crashed and came back; {logs}")
    return Check(name, "ok", evidence)


def _health_fix(kind: str, unit: str, key_file: str) -> str:
    logs = f"journalctl -u {unit} -n 100"
    return {
        "no-listener": f"nothing listens: start it (systemctl start {unit}) or converge "
        f"deploys/full.py; {logs} shows why it stopped",
        "key-file": f"the API key file is missing or unreadable: converge deploys/service.py "
        f"(it writes {key_file}, root-only), or restore it",
        "key-refused": f"the server refused the key in {key_file}: restart the unit so it "
        f"reads the current key (systemctl restart {unit}), or rewrite the file with "
        "deploys/service.py",
    }.get(kind, f"see the service unit check; {logs}")


def health_check(
    smoke_lines: Sequence[str], unit: str, key_file: str = "the API key file"
) -> Check:
    """The smoke tool's result (/health and /v1/models, no chat), its kind of failure
    (no listener, key file, refused key, anything else) choosing the fix."""
    name = "health"
    for line in reversed(smoke_lines):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and "ok" in result:
            if result["ok"]:
                return Check(
                    name, "ok", f"/health answers, /v1/models lists {result.get('models')}"
                )
            kind = str(result.get("kind", ""))
            return Check(
                name,
                "fail",
                f"{kind or 'failed'}: {result.get('error')}",
                _health_fix(kind, unit, key_file),
            )
    text = " ".join(smoke_lines)
    if "python3: not found" in text or "python3: command not found" in text:
        fix = "install python3 on the host: the smoke test runs with it"
    else:
        fix = "the smoke tool itself broke (see evidence): report it with the output"
    return Check(name, "fail", f"smoke test printed no result: {text[-200:] or 'nothing'}", fix)


def _exposed(ip: str) -> bool:
    return ip in ("", "0.0.0.0", "::")


def containers_check(docker: bool, containers: Sequence[Container], ours: str) -> Check:
    """No running container privileged or published on every interface; ours healthy."""
    name = "containers"
    if not docker:
        return Check(name, "skip", "docker is not installed")
    problems, fixes = [], []
    privileged = [c.name for c in containers if c.privileged]
    if privileged:
        problems.append(f"privileged: {', '.join(privileged)}")
        fixes.append("run containers without --privileged (CIS Docker 5.5)")
    exposed = [c.name for c in containers if any(_exposed(ip) for ip in c.bindings)]
    if exposed:
        problems.append(f"published on all interfaces: {', '.join(exposed)}")
        fixes.append("publish as 127.0.0.1:PORT:PORT (CIS Docker 5.14)")
    mine = [c for c in containers if c.name == ours]
    if mine and mine[0].health == "unhealthy":
        problems.append(f"{ours} is unhealthy")
        fixes.append(f"docker inspect {ours} (State.Health.Log) and docker logs {ours}")
    if problems:
        return Check(name, "fail", "; ".join(problems), "; ".join(fixes))
    states = ", ".join(f"{c.name} {c.health or c.status}" for c in containers) or "none running"
    return Check(name, "ok", f"running containers: {states}")
