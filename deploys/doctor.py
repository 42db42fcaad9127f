"""Doctor: read-only diagnosis of any host (also one we did not provision). Changes nothing.

    pyinfra inventories/prod.py deploys/doctor.py

One table per host: check, status (ok / warn / fail / skip), evidence and the fix. Set
AUTOGLM_CHECKS_JSON=<dir> for <dir>/<host>.doctor.json. Fails the host when a check fails.
Four remote commands: the host profile, the GPU probe, the TCP listeners and one for
everything else (model files, service unit, /health, venv, caches, containers, proxies and
mirrors, SELinux/AppArmor, mounts and access as the service user).
"""

from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command

from autoglm_infra import docker_files
from autoglm_infra import nvidia_files as nf
from autoglm_infra import python_env as pe
from autoglm_infra import service_unit as su
from autoglm_infra.checks import Check
from autoglm_infra.docker_args import CONTAINER_NAME, api_key_path
from autoglm_infra.doctor import (
    exposure_check,
    host_checks,
    listeners_script,
    parse_listeners,
    smoke_args,
)
from autoglm_infra.doctor_env import (
    cache_checks,
    cache_mount_check,
    cache_ownership_check,
    engine_versions_check,
    pip_check_check,
    stale_cache_check,
    venv_lock_check,
)
from autoglm_infra.doctor_lsm import apparmor_check, selinux_check
from autoglm_infra.doctor_model import (
    context_length_check,
    lock_from_plan,
    model_access_check,
    model_files_check,
    model_format_check,
)
from autoglm_infra.doctor_network import proxy_env, reach_checks, reach_targets
from autoglm_infra.doctor_service import containers_check, health_check, unit_check
from autoglm_infra.engine_args import served_model_name
from autoglm_infra.gpu_checks import evaluate_gpu
from autoglm_infra.preflight import Minimums
from autoglm_infra.pyinfra_ext.doctor_facts import DoctorProbeFact, doctor_script
from autoglm_infra.pyinfra_ext.facts import GpuProbeFact
from autoglm_infra.pyinfra_ext.report import report_checks
from autoglm_infra.pyinfra_ext.settings import host_profile, host_settings
from autoglm_infra.stack_request import plan_for_host, plan_packages

settings = host_settings()
profile = host_profile(settings.model_dir)
minimums = Minimums(
    settings.preflight_min_cpus, settings.preflight_min_mem_gib, settings.preflight_min_disk_gib
)
checks = host_checks(profile, minimums)

probe = host.get_fact(GpuProbeFact, package_patterns=list(nf.PACKAGE_PATTERNS))
plan = None
try:
    plan = plan_for_host(settings, profile)
except ValueError as exc:
    checks.append(Check("stack plan", "fail", str(exc), "fix the nvidia_* / cuda_* keys"))
else:
    gpu_checks = evaluate_gpu(
        profile, probe, plan.driver_version, plan.cuda_version, plan_packages(plan)
    )
    if not profile.gpus and not settings.nvidia_require_gpu:
        # A GPU-less host by configuration: its missing GPU is expected, not a failure.
        gpu_checks = [
            Check(c.name, "skip", "no NVIDIA GPU (nvidia_require_gpu: false)")
            if c.name == "gpu present"
            else c
            for c in gpu_checks
        ]
    checks += gpu_checks

venv_mode = settings.serve_mode == "venv"
unit = su.UNIT_NAME if venv_mode else docker_files.UNIT_NAME
cache_dirs = (
    [settings.python_cache_dir, *pe.cache_environment(settings.python_cache_dir).values()]
    if venv_mode
    else []
)
cache_env = pe.cache_environment(settings.python_cache_dir)
# Who the engine runs as: the service user, or the container's UID:GID in docker mode.
engine_user = settings.python_service_user if venv_mode else settings.docker_user
path_roles = [("model", settings.model_dir)]
if venv_mode:
    path_roles += [("home", settings.python_cache_dir), *cache_env.items()]
# Version-keyed compile caches (vLLM's torch.compile, Triton, FlashInfer's JIT under HOME).
compile_caches = [
    f"{cache_env['VLLM_CACHE_ROOT']}/torch_compile_cache",
    cache_env["TRITON_CACHE_DIR"],
    f"{settings.python_cache_dir}/.cache/flashinfer",
]
targets = reach_targets(settings)
script = doctor_script(
    model_dir=settings.model_dir,
    unit=unit,
    venv_dir=settings.python_venv_dir if venv_mode else None,
    user=settings.python_service_user,
    cache_dirs=cache_dirs,
    targets=targets,
    env=sorted(proxy_env(settings).items()),
    smoke_args=smoke_args(
        settings.serve_host,
        settings.serve_port,
        served_model_name(settings),
        su.CREDENTIAL_PATH if venv_mode else api_key_path(settings.docker_api_key_delivery),
    ),
    access_user=engine_user,
    path_roles=path_roles,
    compile_caches=compile_caches if venv_mode else (),
    cache_home=settings.python_cache_dir if venv_mode else None,
)
state = host.get_fact(DoctorProbeFact, script=script)

checks.append(
    model_files_check(
        state.model, lock_from_plan(state.model_texts.get("plan.json")), settings.model_dir
    )
)
checks.append(model_format_check(state.model, state.model_texts))
checks.append(model_access_check(state.model_unreadable, settings.model_dir, engine_user))
checks.append(
    context_length_check(
        state.model_texts.get("config.json"), settings.vllm_max_model_len, settings.serve_engine
    )
)
checks.append(unit_check(unit, state.unit))
checks.append(health_check(state.smoke, unit))

if venv_mode:
    try:
        flavour = ""
        if settings.python_profile == pe.AUTO and settings.serve_engine != pe.CPU_PROFILE:
            flavour = plan.torch_flavour if plan else ""
        name = pe.select_profile(settings.python_profile, settings.serve_engine, flavour)
        locks = pe.load_lock_variants(
            name, Path(settings.python_locks_dir or pe.DEFAULT_LOCKS_DIR), settings.python_profile
        )
        # the variant (Python minor) the venv was built from, by the digest stamped into it
        lock = next((lk for lk in locks if lk.digest == state.venv_stamp), locks[0])
    except ValueError as exc:
        checks.append(Check("venv lock", "fail", str(exc), "see evidence"))
    else:
        checks.append(venv_lock_check(lock, state.venv_dists, settings.python_venv_dir))
        checks.append(engine_versions_check(lock, state.venv_dists))
        checks.append(pip_check_check(state.pip_check, lock.expected_conflicts))
    checks += cache_checks(state.caches, cache_dirs, settings.python_service_user)
    checks.append(cache_mount_check(state.paths, cache_dirs))
    checks.append(stale_cache_check(state.venv_built, state.cache_entries))
    checks.append(
        cache_ownership_check(state.foreign_owned, cache_dirs, settings.python_service_user)
    )
checks.append(selinux_check(state.lsm, state.paths, docker=not venv_mode))
checks.append(apparmor_check(state.lsm, settings.model_dir, settings.python_cache_dir))

checks.append(containers_check(state.docker, state.containers, CONTAINER_NAME))
checks += reach_checks(targets, state.reach, settings.no_proxy)

listening = str(host.get_fact(Command, listeners_script()) or "")
checks.append(
    exposure_check(
        settings.serve_host, settings.serve_port, parse_listeners(listening.splitlines())
    )
)

report_checks("doctor", checks)
