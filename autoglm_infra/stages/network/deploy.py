"""Stage 2 - proxy & mirrors: apt, pip, npm, Docker and shell proxies, mirrors, extra CAs.

Runs alone with `pyinfra INVENTORY deploys/network.py`. Every file is written only when
its keys are set and removed when they are unset. Credentials (proxy password, npm token)
are read here on the controller from the environment or a private file and reach the
host only inside 0600 files uploaded over SFTP: never in a command line or the output.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra.operations import server

from autoglm_infra.common.secrets import read_secret
from autoglm_infra.config.keys_network import NPM_TOKEN_ENV, PROXY_PASSWORD_ENV
from autoglm_infra.pyinfra_ext.operations import (
    SnapshotFact,
    put_managed_files,
    remove_file,
)
from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stages.network import files as nw
from autoglm_infra.stages.network.ops import move_files, remove_paths


def _read_ca(path: str) -> nw.CaCert:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise nw.NetworkConfigError(f"ca_cert_files: cannot read {path}: {exc.strerror}") from None
    return nw.ca_cert(path, data)


@stage("network", 2)
def network(run: StageRun) -> None:
    settings = run.settings
    profile = run.profile
    try:
        password = (
            read_secret(PROXY_PASSWORD_ENV, settings.proxy_password_file)
            if settings.proxy_username
            else None
        )
        token = read_secret(NPM_TOKEN_ENV, settings.npm_token_file)
        secrets = nw.NetworkSecrets(
            password.reveal() if password else None, token.reveal() if token else None
        )
        plan = nw.network_plan(
            settings,
            secrets,
            [_read_ca(p) for p in settings.ca_cert_files],
            profile.os_id,
            profile.os_version,
        )
    except ValueError as exc:  # SecretError / NetworkConfigError: user-facing, no traceback
        raise StageRefused(f"nothing was changed: {exc}") from None

    distro_sources = [*nw.DISTRO_SOURCES, *map(nw.parked_path, nw.DISTRO_SOURCES)]
    snapshot = read_state(
        SnapshotFact,
        files=[*nw.MANAGED_PATHS, *plan.paths(), *distro_sources],
        read_text=[nw.CA_STATE],
        commands=["update-ca-certificates", "dockerd"],
    )

    changed = put_managed_files(plan.files, snapshot.files, "network")
    for path in plan.remove:
        changed[path] = remove_file(
            name=f"network: remove {path} (not configured)",
            path=path,
            current=snapshot.files.get(path),
        )

    ca_state = snapshot.files.get(nw.CA_STATE)
    installed_cas = ca_state.text.split() if ca_state and ca_state.text else []
    stale_cas = remove_paths(
        name="network: remove CA certificates no longer configured",
        paths=nw.stale_ca_paths(installed_cas, plan.ca_names),
    )
    ca_ops = [changed[f"{nw.CA_DIR}/{n}"] for n in plan.ca_names] + [stale_cas]
    if snapshot.commands.get("update-ca-certificates"):
        server.shell(
            name="network: refresh the system trust store (CA certificates changed)",
            commands=["update-ca-certificates"],
            _if=lambda: any(op.did_change() for op in ca_ops),
        )

    present = {path: snapshot.files.get(path) is not None for path in distro_sources}
    move_files(
        name="network: park or restore the distro's apt sources (apt_mirror_url)",
        moves=nw.source_moves(bool(settings.apt_mirror_url), present),
    )

    if snapshot.commands.get("dockerd"):
        docker_ops = [changed[nw.DOCKER_PROXY_DROPIN], changed[nw.NETWORK_ENV]]
        server.shell(
            name="network: restart Docker (its proxy changed)",
            commands=["systemctl daemon-reload", "systemctl try-restart docker.service"],
            _if=lambda: any(op.did_change() for op in docker_ops),
        )
