"""Every row of the doctor and gpu_check, run on hosts where nothing was read or nothing
is installed: no row is "ok" without evidence it read (issue 24)."""

from __future__ import annotations

import pytest

from autoglm_infra.common.checks import Check
from autoglm_infra.common.host_profile import HostProfile, parse_host_profile
from autoglm_infra.config.schema import Settings
from autoglm_infra.doctor.probe import END_MARK, DoctorProbe
from autoglm_infra.doctor.probe import parse_doctor_probe as parse_doctor
from autoglm_infra.doctor.table import doctor_checks, gpu_rows
from autoglm_infra.stages.nvidia.gpu_checks import GpuProbe
from autoglm_infra.stages.nvidia.gpu_checks import parse_gpu_probe as parse_gpu

# A plain Debian 12 machine as the host probe reads it: no GPU, legacy boot, no systemd.
BARE_DEBIAN = parse_host_profile(
    ["os_id=debian", "os_version=12", "arch=x86_64", "kernel=6.1.0-40-amd64", "cpus=16",
     "mem_kib=131072000", "disk_path=/", "disk_free_kib=67108864", "efi=no", "virt=none"]
)  # fmt: skip
# The smoke tool's answer when nothing listens and the key file is missing.
NOTHING_LISTENS = (
    'SM {"ok": false, "error": "no answer: [Errno 111] Connection refused", "kind": "no-listener"}'
)
# What was not there may be said plainly; these rows need something present to be "ok".
NEEDS_SOMETHING = {
    "model access", "model files", "model format", "context length", "health", "venv lock",
    "engine versions", "pip check", "cache permissions", "cache filesystem", "cache mounts",
    "stale caches", "cache ownership", "service unit", "packages", "gpu present", "nvidia-smi",
    "driver version", "module = user space", "CUDA supported", "endpoint exposure",
}  # fmt: skip
IMAGE = "vllm/vllm-openai:v0.12.0@sha256:" + "0" * 64


def settings_for(mode: str) -> Settings:
    return Settings(serve_mode=mode, docker_image=IMAGE) if mode == "docker" else Settings()


@pytest.mark.parametrize("mode", ["venv", "docker"])
def test_nothing_read_means_no_row_is_ok(mode: str) -> None:
    settings = settings_for(mode)
    checks = doctor_checks(settings, HostProfile(), GpuProbe(), DoctorProbe(), "")
    assert [c for c in checks if c.status == "ok"] == []
    # an empty profile names no OS: the plan cannot be made, and says so
    assert {c.name for c in checks} >= {"host profile", "stack plan", "doctor probe"}
    rows, _ = gpu_rows(settings, HostProfile(), GpuProbe())
    assert [c for c in rows if c.status == "ok"] == []


def _ok_rows(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.evidence for c in checks if c.status == "ok"}


@pytest.mark.parametrize("mode", ["venv", "docker"])
def test_a_bare_host_gets_ok_only_with_evidence(mode: str) -> None:
    state = parse_doctor([NOTHING_LISTENS, END_MARK])
    assert state.complete and not state.user_exists and not state.model.exists
    checks = doctor_checks(settings_for(mode), BARE_DEBIAN, parse_gpu(["probe=gpu"]), state, "")
    ok = _ok_rows(checks)
    assert all(evidence.strip() and "?" not in evidence for evidence in ok.values()), ok
    assert not set(ok) & NEEDS_SOMETHING, ok
    assert ok["secure boot"] == "off: booted without EFI (legacy BIOS), no Secure Boot there"
    by_name = {c.name: c for c in checks}
    assert by_name["model access"].status == "skip"
    assert by_name["health"].status == "fail" and "no-listener" in by_name["health"].evidence
    assert "python3 must be" not in by_name["health"].fix
    if mode == "venv":
        for name in ("cache filesystem", "cache mounts", "cache ownership"):
            assert by_name[name].status == "skip", by_name[name]


def test_an_empty_gpu_probe_on_a_planned_host_vouches_for_nothing() -> None:
    rows, plan = gpu_rows(Settings(), BARE_DEBIAN, GpuProbe())
    assert plan is not None
    assert [(c.name, c.status) for c in rows] == [("gpu probe", "fail")]
