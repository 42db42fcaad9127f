"""The read-only deploys: doctor (any host) and gpu_check (the NVIDIA stack against the plan).

Neither changes anything on the host, and neither waits for a converge running there.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command

from autoglm_infra.doctor.facts import DoctorProbeFact, ModelContentsFact, doctor_script
from autoglm_infra.doctor.host import listeners_script, smoke_args
from autoglm_infra.doctor.model import contents_script
from autoglm_infra.doctor.network import download_probe_url, proxy_env, reach_targets
from autoglm_infra.doctor.table import doctor_checks, doctor_layout, gpu_rows
from autoglm_infra.host_tools import model_fetch
from autoglm_infra.pyinfra_ext.report import report_checks
from autoglm_infra.pyinfra_ext.settings import host_gpu_probe, host_profile, host_settings
from autoglm_infra.stages.docker.args import CONTAINER_NAME
from autoglm_infra.stages.expose.front import CERT_PATH
from autoglm_infra.stages.model.state import plan_path
from autoglm_infra.stages.service.engine_args import served_model_name

HELPER_SOURCE = Path(model_fetch.__file__).read_text(encoding="utf-8")


def doctor() -> None:
    """One table for the current host: check, status, evidence, fix; fails on a failed check."""
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
        # model locks are relative to where pyinfra runs, as in the model stage
        targets=reach_targets(settings, download_probe_url(settings, Path.cwd())),
        env=sorted(proxy_env(settings).items()),
        smoke_args=smoke_args(
            settings.serve_host, settings.serve_port, served_model_name(settings), layout.key_file
        ),
        access_user=layout.engine_user,
        path_roles=layout.path_roles,
        compile_caches=layout.compile_caches,
        cache_home=settings.python_cache_dir if layout.venv_mode else None,
        container="" if layout.venv_mode else CONTAINER_NAME,
    )
    state = host.get_fact(DoctorProbeFact, script=script)
    listening = str(host.get_fact(Command, listeners_script()) or "")
    contents = None
    if settings.doctor_model_verify == "full":
        script = contents_script(HELPER_SOURCE, plan_path(settings.model_dir))
        contents = host.get_fact(ModelContentsFact, script=script)
    front_cert = ""
    if settings.serve_expose is not None:  # the certificate is public; read as it is served
        front_cert = str(host.get_fact(Command, f"cat {CERT_PATH} 2>/dev/null || true") or "")
    checks = doctor_checks(
        settings, profile, probe, state, listening, contents=contents, front_cert=front_cert
    )
    report_checks("doctor", checks)


def gpu_check() -> None:
    """The NVIDIA stack of the current host against its plan, as one table."""
    settings = host_settings()
    checks, _ = gpu_rows(settings, host_profile(settings.model_dir), host_gpu_probe())
    report_checks("gpu_check", checks)
