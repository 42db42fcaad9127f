"""The doctor's checks of the running endpoint: systemd unit, /health, containers. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from autoglm_infra.checks import Check
from autoglm_infra.doctor_probe import Container


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


def health_check(smoke_lines: Sequence[str], unit: str) -> Check:
    """The smoke tool's result (/health and /v1/models, no chat)."""
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
            return Check(
                name,
                "fail",
                str(result.get("error")),
                f"see the service unit check; journalctl -u {unit} -n 100",
            )
    tail = " ".join(smoke_lines)[-200:]
    return Check(
        name,
        "fail",
        f"smoke test printed no result: {tail or 'nothing'}",
        "python3 must be on the host",
    )


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
