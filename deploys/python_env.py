"""Stage 4 - python env: service user, cache dirs, and a venv installed from a hash lock.

Runs alone with `pyinfra INVENTORY deploys/python_env.py`. The profile is
<serve_engine>-<torch flavour of the stack plan> (e.g. vllm-cu128), or 'cpu' when
serve_engine is cpu (GPU-less hosts); the lock is data/locks/<profile>.txt. One fact
reads the host; pip runs only when the lock changed.
"""

from pathlib import Path

from pyinfra import host, logger
from pyinfra.api.exceptions import PyinfraError

from autoglm_infra import python_env as pe
from autoglm_infra.pyinfra_ext.converge_lock import take_converge_lock
from autoglm_infra.pyinfra_ext.python_ops import (
    PythonEnvFact,
    locked_venv,
    owned_dirs,
    service_user,
    venv_module,
)
from autoglm_infra.pyinfra_ext.settings import host_plan_for, host_profile, host_settings
from autoglm_infra.pyinfra_ext.stage_changes import PYTHON_ENV, record

settings = host_settings()
take_converge_lock("python env", settings.converge_lock_wait)  # before any fact is read
profile = host_profile(settings.model_dir)
cache_dirs = [settings.python_cache_dir, *pe.cache_environment(settings.python_cache_dir).values()]
try:
    flavour = ""
    if settings.python_profile == pe.AUTO and settings.serve_engine != pe.CPU_PROFILE:
        # the torch wheel follows the driver kept on the host (nvidia_driver_policy=adopt)
        flavour = host_plan_for(settings, profile).plan.torch_flavour
    name = pe.select_profile(settings.python_profile, settings.serve_engine, flavour)
    locks_dir = Path(settings.python_locks_dir or pe.DEFAULT_LOCKS_DIR)
    pe.load_lock_variants(name, locks_dir, settings.python_profile)  # refuse before any command
except ValueError as exc:  # StackError / PythonEnvError: user-facing, no traceback
    raise PyinfraError(f"python env stage refused {host.name}: {exc}") from None

state = host.get_fact(
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
except pe.PythonEnvError as exc:
    raise PyinfraError(f"python env stage refused {host.name}: {exc}") from None
logger.info(f"{host.print_prefix}python env: profile {name} ({lock.source})")

record(
    PYTHON_ENV,
    "service user",
    service_user(
        name=f"Python env: service user {settings.python_service_user}",
        user=settings.python_service_user,
        home=settings.python_cache_dir,
        current=state.user,
    ),
)
record(
    PYTHON_ENV,
    "cache directories",
    owned_dirs(
        name="Python env: cache directories owned by the service user",
        paths=cache_dirs,
        owner=settings.python_service_user,
        mode="750",
        current=state.dirs or {},
    ),
)
record(
    PYTHON_ENV,
    "python3-venv",
    venv_module(
        name="Python env: python3-venv",
        has_venv_module=state.has_venv_module,
        interpreter=settings.python_interpreter,
    ),
)
digest = pe.build_digest(lock, settings.python_interpreter)
record(
    PYTHON_ENV,
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
