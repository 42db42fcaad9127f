"""Service stage decisions: the snapshot it reads and when it (re)starts the service."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from autoglm_infra.common.snapshot import FileState, Snapshot
from autoglm_infra.stages.service.state import (
    JOIN_START,
    UnitState,
    expected_inputs,
    inputs_text,
    parse_service_snapshot,
    record_inputs_command,
    restart_reasons,
    service_snapshot_script,
    start_verb,
)

ACTIVE = UnitState("active", "enabled", True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_snapshot_script_runs_and_parses(tmp_path: Path) -> None:
    (tmp_path / "unit").write_text("x\n")
    (tmp_path / "d").mkdir(mode=0o700)
    script = service_snapshot_script(
        "no-such-unit-h7.service",
        "root",
        files=[str(tmp_path / "unit"), str(tmp_path / "gone")],
        dirs=[str(tmp_path / "d"), str(tmp_path / "nodir")],
        read_text=[str(tmp_path / "unit")],
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    snap = parse_service_snapshot(out.stdout.splitlines())
    unit = snap.files.files[str(tmp_path / "unit")]
    assert unit is not None and unit.sha256 == sha(b"x\n") and unit.text == "x\n"
    assert snap.files.files[str(tmp_path / "gone")] is None
    assert snap.dirs == {str(tmp_path / "d"): "700 root root", str(tmp_path / "nodir"): None}
    assert snap.user_exists


def test_parse_unit_state_lines() -> None:
    snap = parse_service_snapshot(
        ["U ActiveState=failed", "U UnitFileState=enabled", "S user 0", "M /x"]
    )
    assert snap.unit == UnitState("failed", "enabled", True)
    assert not snap.user_exists and snap.files.files == {"/x": None}
    assert not parse_service_snapshot([]).unit.systemd  # systemctl did not answer


def test_expected_inputs_use_written_content_then_snapshot() -> None:
    snapshot = Snapshot(files={"/venv/stamp": FileState("ab" * 32, "644", "root", "root")})
    text = expected_inputs(["/unit", "/venv/stamp", "/model/plan"], snapshot, {"/unit": b"u"})
    assert text == f"/unit {sha(b'u')}\n/venv/stamp {'ab' * 32}\n/model/plan missing\n"


def test_host_record_matches_expected_format(tmp_path: Path) -> None:
    """The record the host writes equals what the controller expects for the same files."""
    (tmp_path / "a").write_bytes(b"one")
    paths = [str(tmp_path / "a"), str(tmp_path / "missing file")]
    record = tmp_path / "state" / "inputs"
    subprocess.run(["sh", "-c", record_inputs_command(paths, str(record))], check=True)
    assert record.read_text() == inputs_text([(paths[0], sha(b"one")), (paths[1], None)])


def test_no_restart_when_active_and_inputs_match() -> None:
    assert restart_reasons(ACTIVE, "/u 1\n", "/u 1\n") == []


def test_restart_names_changed_inputs() -> None:
    reasons = restart_reasons(ACTIVE, "/u 1\n/k 2\n", "/u 1\n/k 3\n")
    assert reasons == ["changed: /k"]


def test_start_when_not_active_or_never_recorded() -> None:
    assert restart_reasons(UnitState("failed", "enabled", True), "/u 1\n", "/u 1\n") == [
        "service is failed"
    ]
    assert restart_reasons(ACTIVE, None, "/u 1\n") == ["changed: /u"]


def test_restart_when_an_earlier_stage_changes_venv_or_model() -> None:
    reasons = restart_reasons(ACTIVE, "/u 1\n", "/u 1\n", ["Model: x@abc in /srv/m"])
    assert reasons == ["this run changes: Model: x@abc in /srv/m"]


def test_a_start_under_way_with_the_current_configuration_is_joined_not_restarted() -> None:
    starting = UnitState("activating", "enabled", True)
    reasons = restart_reasons(starting, "/u 1\n", "/u 1\n")
    assert reasons == [JOIN_START] and start_verb(reasons) == "start"
    # a start with an older configuration, or one this run's venv/model change, restarts
    assert start_verb(restart_reasons(starting, "/u 1\n", "/u 2\n")) == "restart"
    assert start_verb(restart_reasons(starting, "/u 1\n", "/u 1\n", ["Model: x"])) == "restart"
    failed = restart_reasons(UnitState("failed", "enabled", True), "/u 1\n", "/u 1\n")
    assert start_verb(failed) == "restart"
