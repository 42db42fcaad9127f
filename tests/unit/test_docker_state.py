"""The Docker stage's one-command state probe: its output parses into what ops compare."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autoglm_infra.stages.docker.state import parse_docker_state, state_script


def test_parse_reads_images_label_volume_unit_and_files() -> None:
    lines = [
        "M /etc/docker/daemon.json",
        "P ii docker.io 20.10.24",
        "C docker 1",
        "DI sha256:abc sha256:abc",
        "DI vllm@sha256:def ",
        "DL 0123456789abcdef",
        "DV 2000:0",
        "SU active enabled",
        "MD 1",
    ]
    state = parse_docker_state(lines)
    assert state.snapshot.files["/etc/docker/daemon.json"] is None
    assert state.snapshot.packages["docker.io"].version == "20.10.24"
    assert state.images == {"sha256:abc": "sha256:abc", "vllm@sha256:def": ""}
    assert state.container_hash == "0123456789abcdef" and state.volume_owner == "2000:0"
    assert (state.unit_active, state.unit_enabled, state.model_dir_exists) == (
        "active", "enabled", True,
    )  # fmt: skip


def test_no_container_and_no_docker_parse_as_absent() -> None:
    state = parse_docker_state(["DL <no value>", "SU inactive disabled", "MD 0"])
    assert state.container_hash == "" and state.volume_owner is None
    assert not state.model_dir_exists and state.images == {}


def test_script_runs_without_docker_and_reports_unit_and_model_dir(tmp_path: Path) -> None:
    script = state_script(
        [str(tmp_path / "f")], [], [], ["docker"], ["sha256:x"], "autoglm", "vol",
        "autoglm-docker.service", str(tmp_path),
    )  # fmt: skip
    env = {"PATH": "/nonexistent"}  # no docker, no systemctl: must still answer
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    state = parse_docker_state(out.stdout.splitlines())
    assert state.model_dir_exists and state.snapshot.files[str(tmp_path / "f")] is None
    assert state.images == {}
