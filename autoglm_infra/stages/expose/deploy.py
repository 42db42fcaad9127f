"""Stage 7 - expose: an nginx TLS front serving the loopback engine to other machines.

Runs alone with `pyinfra INVENTORY deploys/expose.py`; does nothing unless serve_expose is
set. The certificate (the user's, or one from the deployment's CA) and the client keys are
made and checked on the controller; the host gets nginx from Debian's packages, a whole
nginx.conf of this project's, root-only key files and a hardening drop-in. A change of
keys or configuration reloads nginx (in-flight requests finish); only a stopped front or
a new hardening drop-in restarts it.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.operations import server

from autoglm_infra.common.secrets import SecretError, read_secret
from autoglm_infra.common.snapshot import PackageState
from autoglm_infra.config.schema import Settings
from autoglm_infra.pyinfra_ext.operations import (
    apt_present,
    put_file,
    put_managed_files,
    remove_file,
)
from autoglm_infra.pyinfra_ext.preview import previewing
from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stages.expose import front as fr
from autoglm_infra.stages.expose.clients import client_key_path, client_keys
from autoglm_infra.stages.expose.ops import derive_engine_auth, start_front
from autoglm_infra.stages.expose.ops import withdraw_front as withdraw_front_op
from autoglm_infra.stages.expose.tls import ServerPair, TlsError, issued_pair, load_user_pair
from autoglm_infra.stages.service.ops import ServiceSnapshotFact, directory


def server_pair(settings: Settings) -> ServerPair:
    if settings.serve_expose_cert_file and settings.serve_expose_key_file:
        return load_user_pair(settings.serve_expose_cert_file, settings.serve_expose_key_file)
    assert settings.serve_expose is not None
    address = settings.serve_expose.rpartition(":")[0]
    return issued_pair(
        settings.serve_expose_secrets_dir,
        host.name,
        [address, host.name],
        write=not previewing(),  # a preview makes nothing on the controller either
    )


def converge_expose(settings: Settings) -> None:
    try:
        pair = server_pair(settings)
        secrets_dir = settings.serve_expose_secrets_dir
        write = not previewing()
        keys = client_keys(secrets_dir, list(settings.serve_expose_clients), write=write)
        scraper = None
        if settings.serve_metrics is not None:
            scraper = client_keys(secrets_dir, [fr.SCRAPER], "scrapers", write)[fr.SCRAPER]
        engine_key = read_secret(settings.service_api_key_env, settings.service_api_key_file)
        engine_auth = fr.engine_auth_content(engine_key) if engine_key else None
    except (TlsError, SecretError) as exc:  # user-facing, no traceback, nothing changed
        raise StageRefused(str(exc)) from None
    files = fr.front_files(settings, pair.cert_pem, pair.key_pem, keys, scraper)
    binaries = fr.packages(settings)
    source, env_file = fr.engine_key_source(settings)
    snapshot = read_state(
        ServiceSnapshotFact,
        unit_name=fr.UNIT_NAME,
        user=fr.USER,
        files=[f.path for f in files]
        + [*binaries.values(), fr.ENGINE_AUTH_PATH, fr.ENGINE_AUTH_SOURCE, source]
        + ([fr.METRICS_AUTH_PATH] if scraper is None else []),
        dirs=[fr.FRONT_DIR, fr.TEMP_DIR],
        read_text=[fr.ENGINE_AUTH_SOURCE],
    )
    current = snapshot.files.files

    directory(
        name=f"Expose: {fr.FRONT_DIR} (certificates and keys: root and nginx only)",
        path=fr.FRONT_DIR,
        current=snapshot.dirs.get(fr.FRONT_DIR),
        mode="750",
        group=fr.USER,
    )
    directory(
        name=f"Expose: {fr.TEMP_DIR} (nginx's request bodies)",
        path=fr.TEMP_DIR,
        current=snapshot.dirs.get(fr.TEMP_DIR),
        mode="700",
        owner=fr.USER,
        group=fr.USER,
    )
    # the files first: the package's first start then runs this configuration
    written = put_managed_files(files, current, "Expose")
    if scraper is None:
        remove_file(
            name=f"Expose: {fr.METRICS_AUTH_PATH} removed (serve_metrics unset)",
            path=fr.METRICS_AUTH_PATH,
            current=current.get(fr.METRICS_AUTH_PATH),
        )
    if engine_auth is not None:
        auth = put_file(
            name=f"Expose: {fr.ENGINE_AUTH_PATH} (engine key from {engine_key})",
            path=fr.ENGINE_AUTH_PATH,
            content=engine_auth,
            current=current.get(fr.ENGINE_AUTH_PATH),
            mode="640",
            group=fr.USER,
        )
    else:
        record, key_file = current.get(fr.ENGINE_AUTH_SOURCE), current.get(source)
        auth = derive_engine_auth(
            name=f"Expose: {fr.ENGINE_AUTH_PATH} (from the host's engine key {source})",
            source=source,
            env_file=env_file,
            dest=fr.ENGINE_AUTH_PATH,
            record=fr.ENGINE_AUTH_SOURCE,
            group=fr.USER,
            in_sync=bool(
                key_file
                and record
                and current.get(fr.ENGINE_AUTH_PATH)
                and (record.text or "").strip() == key_file.sha256
            ),
        )
    installed = [p for p, binary in binaries.items() if current.get(binary) is not None]
    apt_present(
        name=f"Expose: {', '.join(binaries)} from Debian's packages",
        packages=list(binaries),
        # the binary stands for the package: this stage's snapshot reads no package list
        installed={p: PackageState("installed", held=False) for p in installed},
    )
    if fr.NODE_EXPORTER in installed:  # a fresh install starts it with the new file
        server.shell(
            name=f"Expose: restart {fr.NODE_EXPORTER} (now on {fr.NODE_EXPORTER_LISTEN} only)",
            commands=[f"systemctl restart {fr.NODE_EXPORTER}"],
            _if=written[fr.NODE_EXPORTER_DEFAULTS].did_change,
        )
    running = snapshot.unit.active == "active" and snapshot.unit.enabled == "enabled"
    start_front(
        name=f"Expose: start {fr.UNIT_NAME}",
        unit=fr.UNIT_NAME,
        active=snapshot.unit.active,
        enabled=snapshot.unit.enabled,
    )
    dropin = written.pop(fr.HARDENING_PATH)
    changed = [op for path, op in written.items() if path != fr.NODE_EXPORTER_DEFAULTS] + [auth]
    if running:
        server.shell(
            name=f"Expose: restart {fr.UNIT_NAME} (hardening drop-in changed)",
            commands=[
                "systemctl daemon-reload",
                f"{fr.CONFIG_TEST} && systemctl restart {fr.UNIT_NAME}",
            ],
            _if=dropin.did_change,
        )
        server.shell(
            name=f"Expose: reload {fr.UNIT_NAME} (configuration or keys changed; in-flight "
            "requests finish)",
            commands=[f"{fr.CONFIG_TEST} && {fr.reload_command(fr.UNIT_NAME)}"],
            _if=lambda: not dropin.did_change() and any(op.did_change() for op in changed),
        )
    logger.info(
        f"{host.print_prefix}expose: https://{settings.serve_expose}/v1 (CA: {secrets_dir}/ca.crt"
        f", client keys: {client_key_path(secrets_dir, '<client>')})"
    )


def withdraw_front() -> None:
    """serve_expose unset: a front an earlier converge set up stops serving, keys removed."""
    snapshot = read_state(
        ServiceSnapshotFact, unit_name=fr.UNIT_NAME, user=fr.USER, dirs=[fr.FRONT_DIR]
    )
    withdraw_front_op(
        name="Expose: serve_expose unset: stop nginx and remove its keys",
        unit=fr.UNIT_NAME,
        front_dir=fr.FRONT_DIR,
        present=snapshot.dirs.get(fr.FRONT_DIR) is not None,
    )


@stage("expose", 8)
def expose(run: StageRun) -> None:
    if run.settings.serve_expose is None:
        withdraw_front()
        return
    converge_expose(run.settings)
