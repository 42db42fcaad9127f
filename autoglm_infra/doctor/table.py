"""The doctor's whole table from what was read, and the GPU acceptance rows. Pure.

deploys/doctor.py reads (host profile, GPU probe, the one doctor probe, TCP listeners)
and hands everything here, so every row can be checked on any input, an empty one
included: a probe that printed nothing reads as nothing, never as "ok".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autoglm_infra.common.checks import Check, Status
from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR
from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.config.schema import Settings
from autoglm_infra.doctor.env import (
    cache_checks,
    cache_mount_check,
    cache_ownership_check,
    engine_versions_check,
    pip_check_check,
    stale_cache_check,
    venv_lock_check,
)
from autoglm_infra.doctor.front import front_check
from autoglm_infra.doctor.host import exposure_check, host_checks, parse_listeners
from autoglm_infra.doctor.lsm import apparmor_check, selinux_check
from autoglm_infra.doctor.model import (
    ModelContents,
    context_length_check,
    lock_from_plan,
    model_access_check,
    model_contents_check,
    model_files_check,
    model_format_check,
)
from autoglm_infra.doctor.network import reach_checks, reach_targets
from autoglm_infra.doctor.probe import DoctorProbe
from autoglm_infra.doctor.service import containers_check, health_check, unit_check
from autoglm_infra.stack.adopt import KEEP, REFUSE, HostPlan, host_plan
from autoglm_infra.stack.installed import installed_stack
from autoglm_infra.stack.resolver import StackPlan
from autoglm_infra.stages.docker import files as docker_files
from autoglm_infra.stages.docker.args import CONTAINER_NAME, api_key_path
from autoglm_infra.stages.nvidia.gpu_checks import GpuProbe, evaluate_gpu
from autoglm_infra.stages.preflight.problems import Minimums
from autoglm_infra.stages.python_env import venv as pe
from autoglm_infra.stages.service import unit as su


@dataclass(frozen=True)
class DoctorLayout:
    """Where the doctor looks on a host, from the settings (the probe and the checks agree)."""

    venv_mode: bool
    unit: str
    engine_user: str  # who the engine runs as: the service user, or Docker's UID:GID
    cache_dirs: list[str] = field(default_factory=list)
    path_roles: list[tuple[str, str]] = field(default_factory=list)
    compile_caches: list[str] = field(default_factory=list)
    key_file: str = ""


def doctor_layout(settings: Settings) -> DoctorLayout:
    venv_mode = settings.serve_mode == "venv"
    cache_env = pe.cache_environment(settings.python_cache_dir)
    path_roles = [("model", settings.model_dir)]
    if venv_mode:
        path_roles += [("home", settings.python_cache_dir), *cache_env.items()]
    return DoctorLayout(
        venv_mode=venv_mode,
        unit=su.UNIT_NAME if venv_mode else docker_files.UNIT_NAME,
        engine_user=settings.python_service_user if venv_mode else settings.docker_user,
        cache_dirs=[settings.python_cache_dir, *cache_env.values()] if venv_mode else [],
        path_roles=path_roles,
        # Version-keyed compile caches (vLLM's torch.compile, Triton, FlashInfer's JIT).
        compile_caches=[
            f"{cache_env['VLLM_CACHE_ROOT']}/torch_compile_cache",
            cache_env["TRITON_CACHE_DIR"],
            f"{settings.python_cache_dir}/.cache/flashinfer",
        ]
        if venv_mode
        else [],
        key_file=su.CREDENTIAL_PATH
        if venv_mode
        else api_key_path(settings.docker_api_key_delivery),
    )


def gpu_rows(
    settings: Settings, profile: HostProfile, probe: GpuProbe
) -> tuple[list[Check], StackPlan | None]:
    """The GPU acceptance rows (gpu_check and the doctor) and the plan they compare with."""
    try:
        host = host_plan(settings, profile, installed_stack(probe))
    except ValueError as exc:  # StackError: the configuration cannot work on this host
        return [Check("stack plan", "fail", str(exc), "fix the nvidia_* / cuda_* keys")], None
    plan = host.plan
    checks = evaluate_gpu(profile, probe, plan.driver_version, plan.cuda_version, host.packages)
    if probe.read:
        checks = [*component_checks(host), *checks]
    return [*checks, *stack_warning_checks(plan)], plan


def stack_warning_checks(plan: StackPlan) -> list[Check]:
    """The plan's warnings (an ended driver branch, a known torch defect such as the torch
    2.9 Conv3d one), each a `warn` row whose fix is the part after "fix:"."""
    rows = []
    for warning in plan.warnings:
        evidence, _, fix = warning.partition("; fix: ")
        name = "driver lifecycle" if warning.startswith("driver branch") else "engine stack"
        rows.append(Check(name, "warn", evidence, fix or "see stack/nvidia_stack.yaml"))
    return rows


def component_checks(host: HostPlan) -> list[Check]:
    """One row per component: keep (read on the host), install/upgrade (a converge does
    it) or refuse (the NVIDIA stage stops; the reason says how to go on)."""
    rows = []
    for c in host.components:
        status: Status = "ok" if c.action == KEEP else "fail" if c.action == REFUSE else "warn"
        fix = "" if c.action == REFUSE else "converge deploys/nvidia.py"
        rows.append(Check(f"{c.name}: {c.action}", status, c.why, fix or c.why))
    return rows


def doctor_checks(
    settings: Settings,
    profile: HostProfile,
    gpu: GpuProbe,
    state: DoctorProbe,
    listeners: str,
    contents: ModelContents | None = None,
    front_cert: str = "",
) -> list[Check]:
    """Every row of the doctor's table, in the order an operator reads them. `contents`:
    the full re-hash (`doctor_model_verify: full`), None when not run; `front_cert`: the
    TLS front's certificate (PEM) when serve_expose is set."""
    layout = doctor_layout(settings)
    minimums = Minimums(
        settings.preflight_min_cpus, settings.preflight_min_mem_gib, settings.preflight_min_disk_gib
    )
    checks = host_checks(profile, minimums)
    rows, plan = gpu_rows(settings, profile, gpu)
    if not profile.gpus and not settings.nvidia_require_gpu:
        # A GPU-less host by configuration: its missing GPU is expected, not a failure
        # (gpu_check, the GPU acceptance, still fails it).
        rows = [
            Check(c.name, "skip", "no NVIDIA GPU (nvidia_require_gpu: false)")
            if c.name == "gpu present"
            else c
            for c in rows
        ]
    checks += rows
    if not state.complete:
        return [
            *checks,
            Check(
                "doctor probe",
                "fail",
                "the doctor's probe did not run to its end (it printed "
                f"{'nothing' if state == DoctorProbe() else 'part of its output'}): "
                "model, service, venv, caches, containers and reachability not read",
                "run again with -vv to see the probe's output and error",
            ),
        ]
    checks += _probe_checks(settings, layout, state, plan, listeners, contents)
    if settings.serve_expose is not None:
        found = parse_listeners(listeners.splitlines())
        checks.append(front_check(settings.serve_expose, front_cert, found))
    return checks


def _probe_checks(
    settings: Settings,
    layout: DoctorLayout,
    state: DoctorProbe,
    plan: StackPlan | None,
    listeners: str,
    contents: ModelContents | None,
) -> list[Check]:
    model_exists = state.model.exists
    checks = [
        model_files_check(
            state.model, lock_from_plan(state.model_texts.get("plan.json")), settings.model_dir
        ),
        *([] if contents is None else [model_contents_check(contents, settings.model_dir)]),
        model_format_check(state.model, state.model_texts),
        model_access_check(
            state.model_unreadable,
            settings.model_dir,
            layout.engine_user,
            model_exists=model_exists,
            user_exists=state.user_exists,
        ),
        context_length_check(
            state.model_texts.get("config.json"),
            settings.vllm_max_model_len,
            settings.serve_engine,
            model_exists=model_exists,
        ),
        unit_check(layout.unit, state.unit),
        health_check(state.smoke, layout.unit, layout.key_file),
    ]
    if layout.venv_mode:
        checks += _venv_checks(settings, layout, state, plan)
    checks.append(selinux_check(state.lsm, state.paths, docker=not layout.venv_mode))
    checks.append(
        apparmor_check(
            state.lsm, settings.model_dir, settings.python_cache_dir, docker=not layout.venv_mode
        )
    )
    checks.append(containers_check(state.docker, state.containers, CONTAINER_NAME))
    # the download probe's URL came from the stored lock when the script was built
    download = next((r.url for r in state.reach if r.kind == "model download"), None)
    checks += reach_checks(reach_targets(settings, download), state.reach, settings.no_proxy)
    checks.append(
        exposure_check(
            settings.serve_host, settings.serve_port, parse_listeners(listeners.splitlines())
        )
    )
    return checks


def _venv_checks(
    settings: Settings, layout: DoctorLayout, state: DoctorProbe, plan: StackPlan | None
) -> list[Check]:
    checks = []
    try:
        flavour = ""
        if settings.python_profile == pe.AUTO and settings.serve_engine != pe.CPU_PROFILE:
            flavour = pe.plan_profile(plan) if plan else ""
        name = pe.select_profile(settings.python_profile, settings.serve_engine, flavour)
        locks = pe.load_lock_variants(
            name, Path(settings.python_locks_dir or DEFAULT_LOCKS_DIR), settings.python_profile
        )
        # the variant (Python minor) the venv was built from, by the digest stamped into it
        lock = next((lk for lk in locks if lk.digest == state.venv_stamp), locks[0])
    except ValueError as exc:
        checks.append(Check("venv lock", "fail", str(exc), "see evidence"))
    else:
        checks.append(venv_lock_check(lock, state.venv_dists, settings.python_venv_dir))
        checks.append(engine_versions_check(lock, state.venv_dists))
        checks.append(pip_check_check(state.pip_check, lock.expected_conflicts))
    user = settings.python_service_user
    checks += cache_checks(state.caches, layout.cache_dirs, user)
    checks.append(cache_mount_check(state.paths, layout.cache_dirs))
    checks.append(stale_cache_check(state.venv_built, state.cache_entries))
    home = state.paths.get(settings.python_cache_dir)
    checks.append(
        cache_ownership_check(
            state.foreign_owned, layout.cache_dirs, user, home_exists=bool(home and home.exists)
        )
    )
    return checks
