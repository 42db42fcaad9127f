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

from autoglm_infra.doctor import listeners_script, smoke_args
from autoglm_infra.doctor_network import download_probe_url, proxy_env, reach_targets
from autoglm_infra.doctor_table import doctor_checks, doctor_layout
from autoglm_infra.engine_args import served_model_name
from autoglm_infra.pyinfra_ext.doctor_facts import DoctorProbeFact, doctor_script
from autoglm_infra.pyinfra_ext.report import report_checks
from autoglm_infra.pyinfra_ext.settings import host_gpu_probe, host_profile, host_settings

settings = host_settings()
profile = host_profile(settings.model_dir)
probe = host_gpu_probe()
layout = doctor_layout(settings)
script = doctor_script(
    model_dir=settings.model_dir,
    unit=layout.unit,
    venv_dir=settings.python_venv_dir if layout.venv_mode else None,
    user=settings.python_service_user,
    cache_dirs=layout.cache_dirs,
    targets=reach_targets(settings, download_probe_url(settings, Path(__file__).parents[1])),
    env=sorted(proxy_env(settings).items()),
    smoke_args=smoke_args(
        settings.serve_host, settings.serve_port, served_model_name(settings), layout.key_file
    ),
    access_user=layout.engine_user,
    path_roles=layout.path_roles,
    compile_caches=layout.compile_caches,
    cache_home=settings.python_cache_dir if layout.venv_mode else None,
)
state = host.get_fact(DoctorProbeFact, script=script)
listening = str(host.get_fact(Command, listeners_script()) or "")
report_checks("doctor", doctor_checks(settings, profile, probe, state, listening))
