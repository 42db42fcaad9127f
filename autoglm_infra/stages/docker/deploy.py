"""Stage 6 (docker mode) - Docker engine, NVIDIA container toolkit, hardened model container.

Runs alone with `pyinfra INVENTORY deploys/docker.py`; does nothing on hosts whose
serve_mode is venv. The container's flags come from the pure `docker_args`; this file
turns them and one snapshot of the host into operations.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.operations import server

from autoglm_infra.common.host_profile import HostProfile
from autoglm_infra.common.key_trust import KeyTrustError, fetch_trusted_keyring
from autoglm_infra.common.managed_file import ManagedFile
from autoglm_infra.common.secrets import Secret, SecretError, read_secret
from autoglm_infra.common.snapshot import Snapshot
from autoglm_infra.config.schema import Settings
from autoglm_infra.pyinfra_ext.operations import (
    apt_pinned,
    apt_present,
    put_file,
    put_managed_files,
    remove_file,
)
from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stages.docker import files as df
from autoglm_infra.stages.docker.args import (
    API_KEY_FILE,
    CONTAINER_NAME,
    ENV_FILE,
    generate_key_file_command,
    key_file_content,
    spec_from_settings,
    spec_hash,
)
from autoglm_infra.stages.docker.image import (
    DerivedLock,
    ImageError,
    check_tarball,
    load_derived_lock,
    pull_failure_hint,
)
from autoglm_infra.stages.docker.ops import (
    DockerStateFact,
    enable_unit,
    ensure_image,
    ensure_volume,
    generate_env_file,
    generate_file,
    require_dir,
    restart_unit,
)

PACKAGE_PATTERNS = (
    "apparmor",
    "docker.io",
    "docker-ce*",
    "containerd*",
    "nvidia-container-*",
    "libnvidia-container*",
)


def plan_files(settings: Settings, profile: HostProfile) -> list[ManagedFile]:
    """Repository keys and sources, checked on the controller before any host sees them."""
    arch = df.deb_arch(profile.arch)
    files = []
    if settings.docker_engine_source == "docker-repo":
        repo = df.docker_repo_url(settings.docker_repo_base_url, profile.os_id)
        key = fetch_trusted_keyring(
            df.docker_key_url(repo),
            settings.docker_repo_key_fingerprint,
            "docker_repo_key_fingerprint",
        )
        suite = df.codename(profile.os_id, profile.os_version)
        files += [
            ManagedFile(df.DOCKER_KEYRING, key),
            ManagedFile(df.DOCKER_SOURCE, df.docker_source(repo, suite, arch).encode()),
        ]
    base = settings.docker_toolkit_repo_base_url
    key = fetch_trusted_keyring(
        df.toolkit_key_url(base),
        settings.docker_toolkit_key_fingerprint,
        "docker_toolkit_key_fingerprint",
    )
    source = df.toolkit_source(df.toolkit_repo_url(base, arch))
    files += [
        ManagedFile(df.TOOLKIT_KEYRING, key),
        ManagedFile(df.TOOLKIT_SOURCE, source.encode()),
    ]
    return files


def deliver_api_key(settings: Settings, api_key: Secret | None, snap: Snapshot) -> Any:
    """The key file the container gets (env file or mounted file); the other one removed."""
    mount = settings.docker_api_key_delivery == "secret-mount"
    path, other = (API_KEY_FILE, ENV_FILE) if mount else (ENV_FILE, API_KEY_FILE)
    remove_file(
        name=f"Docker: {other} removed (API key delivered by {settings.docker_api_key_delivery})",
        path=other,
        current=snap.files.get(other),
    )
    if api_key is not None:
        try:
            content = (key_file_content if mount else df.env_file_content)(api_key.reveal())
        except ValueError as exc:  # DockerStageError is one
            raise StageRefused(str(exc)) from None
        return put_file(
            name=f"Docker: {path} (API key from {api_key.source})",
            path=path,
            content=content,
            current=snap.files.get(path),
            mode="440" if mount else "600",  # 440: the container's group 0 reads the mount
        )
    if mount:
        return generate_file(
            name=f"Docker: {path} (API key generated on the host once)",
            path=path,
            exists=snap.files.get(path) is not None,
            command=generate_key_file_command(path),
        )
    return generate_env_file(
        name=f"Docker: {path} (API key generated on the host once)",
        path=path,
        exists=snap.files.get(path) is not None,
    )


def converge_docker(settings: Settings, profile: HostProfile) -> None:
    image = settings.docker_image
    assert image is not None  # the schema requires it in docker mode
    try:
        files = plan_files(settings, profile)
        if settings.docker_image_tarball is not None:
            check_tarball(settings.docker_image_tarball, image)
        # The same API key settings as venv mode (service_api_key_env / _file).
        api_key = read_secret(settings.service_api_key_env, settings.service_api_key_file)
        derived: DerivedLock | None = None
        if settings.docker_derived_lock is not None:
            derived = load_derived_lock(settings.docker_derived_lock, settings.docker_locks_dir)
    except (df.DockerStageError, ImageError, KeyTrustError, SecretError) as exc:
        raise StageRefused(str(exc)) from None

    dockerfile = None
    run_image = image
    if derived is not None:
        dockerfile = df.render_dockerfile(
            image,
            derived.name,
            derived.lock.import_check,
            settings.docker_user,
            settings.serve_port,
        )
        run_image = df.derived_image_tag(dockerfile, derived.text)
    spec = spec_from_settings(settings, image=run_image)
    wanted_hash = spec_hash(spec)
    unit_text = df.render_container_unit(spec)

    state = read_state(
        DockerStateFact,
        files=[f.path for f in files]
        + [df.DAEMON_JSON, df.TOOLKIT_HELD_STATE, df.UNIT_PATH, ENV_FILE, API_KEY_FILE]
        + [df.DOCKERFILE, df.DERIVED_LOCK],
        package_patterns=list(PACKAGE_PATTERNS),
        read_text=[df.DAEMON_JSON],
        image_refs=sorted({image, run_image}),
        container=CONTAINER_NAME,
        volume=settings.docker_cache_volume,
        unit=df.UNIT_NAME,
        model_dir=settings.model_dir,
    )
    snap = state.snapshot

    put_managed_files(files, snap.files, "Docker")

    current_daemon = snap.files.get(df.DAEMON_JSON)
    try:
        daemon_doc = df.daemon_config(
            df.parse_daemon_json(current_daemon.text if current_daemon else None),
            # owned by the proxies & mirrors keys when they exist
            settings.docker_registry_mirrors,
        )
    except df.DockerStageError as exc:
        raise StageRefused(str(exc)) from None
    daemon = put_file(
        name=f"Docker: {df.DAEMON_JSON} (no-new-privileges, live-restore, no userland-proxy)",
        path=df.DAEMON_JSON,
        content=df.render_json(daemon_doc),
        current=current_daemon,
    )

    engine = df.engine_packages(settings.docker_engine_source)
    engine_was_installed = all(p in snap.packages for p in engine)
    # before the engine: dockerd decides once, at its start, whether it can confine
    parser = df.confinement_packages(profile.apparmor)
    confinement = []
    if parser:
        confinement.append(
            apt_present(
                name=f"Docker: {', '.join(parser)} (dockerd loads docker-default with it)",
                packages=parser,
                installed=snap.packages,
            )
        )
    apt_present(
        name=f"Docker: engine ({', '.join(engine)})", packages=engine, installed=snap.packages
    )
    # a running container keeps the confinement it started with
    triggers = list(confinement) if engine_was_installed else []
    if engine_was_installed:
        server.shell(
            name="Docker: restart dockerd (daemon.json or AppArmor changed; live-restore "
            "keeps containers)",
            commands=["systemctl restart docker"],
            _if=lambda: any(op.did_change() for op in [daemon, *confinement]),
        )
    apt_pinned(
        name=f"Docker: NVIDIA container toolkit {settings.docker_toolkit_version}, held",
        packages=df.toolkit_plan(settings.docker_toolkit_version),
        installed=snap.packages,
        state_file=df.TOOLKIT_HELD_STATE,
    )

    require_dir(
        name="Docker: model directory present",
        path=settings.model_dir,
        exists=state.model_dir_exists,
        hint="converge the model stage first (deploys/model.py)",
    )
    env = deliver_api_key(settings, api_key, snap)
    triggers.append(env)
    triggers.append(
        ensure_image(
            name=f"Docker: image {image}",
            ref=image,
            present_id=state.images.get(image, ""),
            tarball=settings.docker_image_tarball,
            pull_hint=pull_failure_hint(
                image, list(settings.docker_registry_mirrors), settings.proxy_url
            ),
        )
    )
    if derived is not None and dockerfile is not None:
        context = [
            put_file(
                name=f"Docker: {path}",
                path=path,
                content=content.encode(),
                current=snap.files.get(path),
            )
            for path, content in ((df.DOCKERFILE, dockerfile), (df.DERIVED_LOCK, derived.text))
        ]
        build_args = []
        if settings.pip_index_url:
            build_args += ["--build-arg", f"PIP_INDEX_URL={settings.pip_index_url}"]
        if settings.pip_trusted_hosts:
            hosts = " ".join(settings.pip_trusted_hosts)
            build_args += ["--build-arg", f"PIP_TRUSTED_HOST={hosts}"]
        triggers += [
            *context,
            ensure_image(
                name=f"Docker: build {run_image} (lock {derived.name})",
                ref=run_image,
                present_id=state.images.get(run_image, ""),
                build_command=df.build_command(
                    run_image, build_args, derived.name, str(derived.path)
                ),
            ),
        ]
    ensure_volume(
        name=f"Docker: cache volume {settings.docker_cache_volume}",
        volume=settings.docker_cache_volume,
        owner=settings.docker_user,
        current_owner=state.volume_owner,
    )

    unit = put_file(
        name=f"Docker: {df.UNIT_PATH}",
        path=df.UNIT_PATH,
        content=unit_text.encode(),
        current=snap.files.get(df.UNIT_PATH),
    )
    triggers.append(unit)
    server.shell(
        name="Docker: systemctl daemon-reload",
        commands=["systemctl daemon-reload"],
        _if=unit.did_change,
    )
    enable_unit(
        name=f"Docker: enable {df.UNIT_NAME}", unit=df.UNIT_NAME, enabled=state.unit_enabled
    )
    if state.unit_active != "active":
        reason = f"unit was {state.unit_active or 'unknown'}"
    elif state.container_hash != wanted_hash:
        reason = f"running spec {state.container_hash or 'none'}, wanted {wanted_hash}"
    else:
        reason = ""
    restart_unit(
        name=f"Docker: (re)start {df.UNIT_NAME} and wait until healthy",
        unit=df.UNIT_NAME,
        reason=reason or "configuration changed",
        _if=lambda: bool(reason) or any(op.did_change() for op in triggers),
    )
    logger.info(f"{host.print_prefix}docker: container spec {wanted_hash}, image {run_image}")


@stage("Docker", 7)
def docker(run: StageRun) -> None:
    if run.settings.serve_mode == "docker":
        converge_docker(run.settings, run.profile)
    else:
        logger.info(f"{host.print_prefix}docker stage: serve_mode is venv, nothing to do here")
