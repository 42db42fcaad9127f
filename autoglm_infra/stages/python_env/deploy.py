"""Stage 4 - python env: service user, cache dirs, and a venv installed from a hash lock.

Runs alone with `pyinfra INVENTORY deploys/python_env.py`. The profile is
<serve_engine>-<torch flavour of the stack plan> (e.g. vllm-cu128), or 'cpu' when
serve_engine is cpu (GPU-less hosts); the lock is
autoglm_infra/locks/<profile>.txt. One fact
reads the host; pip runs only when the lock changed.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, logger

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR, HashLockError
from autoglm_infra.pyinfra_ext.settings import host_plan_for
from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stages.python_env import venv as pe
from autoglm_infra.stages.python_env.ops import (
    PythonEnvFact,
    locked_venv,
    owned_dirs,
    service_user,
    venv_module,
)


@stage("python env", 4)
def python_env(run: StageRun) -> None:
    settings = run.settings
    profile = run.profile
    cache_dirs = [
        settings.python_cache_dir,
        *pe.cache_environment(settings.python_cache_dir).values(),
    ]
    try:
        flavour = ""
        if settings.python_profile == pe.AUTO and settings.serve_engine != pe.CPU_PROFILE:
            # the torch wheel follows the driver kept on the host (nvidia_driver_policy=adopt)
            flavour = pe.plan_profile(host_plan_for(settings, profile).plan)
        name = pe.select_profile(settings.python_profile, settings.serve_engine, flavour)
        locks_dir = Path(settings.python_locks_dir or DEFAULT_LOCKS_DIR)
        pe.load_lock_variants(name, locks_dir, settings.python_profile)  # refuse before any command
    except ValueError as exc:  # StackError / PythonEnvError: user-facing, no traceback
        raise StageRefused(str(exc)) from None

    state = read_state(
        PythonEnvFact,
        interpreter=settings.python_interpreter,
        venv_dir=settings.python_venv_dir,
        user=settings.python_service_user,
        dirs=cache_dirs,
    )
    try:
        # the lock resolved for the host's Python minor (<profile>.py3XX.txt), if there is one
        lock = pe.load_lock(name, locks_dir, settings.python_profile, state.interpreter_version)
        pe.check_interpreter(settings.python_interpreter, state.interpreter_version, lock)
    except HashLockError as exc:  # PythonEnvError is one
        raise StageRefused(str(exc)) from None
    logger.info(f"{host.print_prefix}python env: profile {name} ({lock.source})")

    run.record(
        "service user",
        service_user(
            name=f"Python env: service user {settings.python_service_user}",
            user=settings.python_service_user,
            home=settings.python_cache_dir,
            current=state.user,
        ),
    )
    run.record(
        "cache directories",
        owned_dirs(
            name="Python env: cache directories owned by the service user",
            paths=cache_dirs,
            owner=settings.python_service_user,
            mode="750",
            current=state.dirs or {},
        ),
    )
    run.record(
        "python3-venv",
        venv_module(
            name="Python env: python3-venv",
            has_venv_module=state.has_venv_module,
            interpreter=settings.python_interpreter,
        ),
    )
    digest = pe.build_digest(lock, settings.python_interpreter)
    run.record(
        "venv",
        locked_venv(
            name=f"Python env: venv from lock {name}",
            lock=lock,
            interpreter=settings.python_interpreter,
            venv_dir=settings.python_venv_dir,
            digest=digest,
            pip_args=pe.index_args(
                lock,
                settings.pip_index_url,
                settings.python_torch_index_url,
                settings.python_pip_extra_args,
            ),
            state=state,
        ),
    )
