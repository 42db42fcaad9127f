"""Stage 6 - service (venv mode): the hardened systemd unit serving the model, healthy.

Runs alone with `pyinfra INVENTORY deploys/service.py`. Writes the unit (rendered by the
pure `service_unit`), the health gate and the API key credential (0600 root, from the
controller or generated once on the host), then starts or restarts the service only
when something it runs with changed, and fails the converge when /health does not
answer. Docker mode is the docker stage's job: this stage does nothing there.
"""

from __future__ import annotations

from pyinfra import host, logger

from autoglm_infra.common.secrets import SecretError, read_secret
from autoglm_infra.pyinfra_ext.operations import put_file
from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stages.model.state import plan_path, stamps_path
from autoglm_infra.stages.python_env.venv import STAMP_FILE
from autoglm_infra.stages.service import unit as su
from autoglm_infra.stages.service.ops import (
    ServiceSnapshotFact,
    directory,
    generate_api_key,
    run_service,
)
from autoglm_infra.stages.service.state import INPUTS_RECORD, expected_inputs, restart_reasons


@stage("service", 6)
def service(run: StageRun) -> None:
    settings = run.settings

    if settings.serve_mode != "venv":
        host.noop(f"service stage: serve_mode is {settings.serve_mode}, not venv")
        return
    layout = su.ServiceLayout(
        venv=settings.python_venv_dir,
        user=settings.python_service_user,
        group=settings.python_service_user,
        cache_dir=settings.python_cache_dir,
    )
    try:
        secret = read_secret(settings.service_api_key_env, settings.service_api_key_file)
        key_content = su.api_key_file_content(secret) if secret else None
    except SecretError as exc:  # user-facing, no traceback, nothing changed
        raise StageRefused(f"API key: {exc}") from None

    unit_text = su.render_unit(settings, layout).encode()
    gate = su.health_gate_script()
    # Files whose change needs a restart, in the order of the inputs record.
    inputs = [
        su.UNIT_PATH,
        su.CREDENTIAL_PATH,
        f"{layout.venv}/{STAMP_FILE}",
        plan_path(settings.model_dir),
        stamps_path(settings.model_dir),
    ]
    snapshot = read_state(
        ServiceSnapshotFact,
        unit_name=su.UNIT_NAME,
        user=layout.user,
        files=[*inputs, su.HEALTH_GATE_PATH, INPUTS_RECORD],
        dirs=[su.CREDENTIAL_DIR, settings.serve_media_dir],
        read_text=[INPUTS_RECORD],
    )
    if not snapshot.unit.systemd:
        raise StageRefused(
            "systemd is not running as PID 1 "
            "(systemctl does not answer); venv mode needs a booted systemd host"
        )
    files = snapshot.files.files

    unit_op = put_file(
        name=f"Service: {su.UNIT_PATH}",
        path=su.UNIT_PATH,
        content=unit_text,
        current=files.get(su.UNIT_PATH),
    )
    put_file(
        name=f"Service: health gate {su.HEALTH_GATE_PATH}",
        path=su.HEALTH_GATE_PATH,
        content=gate,
        current=files.get(su.HEALTH_GATE_PATH),
        mode="755",
    )
    directory(
        name=f"Service: media directory {settings.serve_media_dir} (the only one requests read)",
        path=settings.serve_media_dir,
        current=snapshot.dirs.get(settings.serve_media_dir),
        mode="755",
    )
    directory(
        name=f"Service: credentials directory {su.CREDENTIAL_DIR} (root only)",
        path=su.CREDENTIAL_DIR,
        current=snapshot.dirs.get(su.CREDENTIAL_DIR),
        mode="700",
    )
    written = {su.UNIT_PATH: unit_text}
    if key_content is not None:
        put_file(
            name=f"Service: API key {su.CREDENTIAL_PATH} (0600, from the controller)",
            path=su.CREDENTIAL_PATH,
            content=key_content,
            current=files.get(su.CREDENTIAL_PATH),
            mode="600",
        )
        written[su.CREDENTIAL_PATH] = key_content
    else:
        generate_api_key(
            name=f"Service: API key {su.CREDENTIAL_PATH} (generated once on the host)",
            path=su.CREDENTIAL_PATH,
            exists=files.get(su.CREDENTIAL_PATH) is not None,
        )

    record = files.get(INPUTS_RECORD)
    reasons = restart_reasons(
        snapshot.unit,
        record.text if record else None,
        expected_inputs(inputs, snapshot.files, written),
        run.queued_changes("python env", "model"),
    )
    if reasons and not snapshot.user_exists and not run.queued_changes("python env"):
        raise StageRefused(
            f"service user {layout.user!r} does not "
            "exist; run the python env stage first (deploys/python_env.py)"
        )
    run_service(
        name=f"Service: run {su.UNIT_NAME} (healthy within {settings.service_start_timeout_sec} s)",
        unit_name=su.UNIT_NAME,
        reload=unit_op.will_change,
        enable=snapshot.unit.enabled != "enabled",
        reasons=reasons,
        inputs=inputs,
    )
    logger.info(
        f"{host.print_prefix}service: {su.health_url(settings).removesuffix('/health')}/v1, "
        f"API key: sudo cat {su.CREDENTIAL_PATH}"
    )
