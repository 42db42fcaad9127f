"""The systemd unit of the model service (venv mode), rendered from a template. Pure.

`render_unit` turns settings into
`autoglm_infra/stages/service/templates/autoglm-serve.service.j2`: engine command
(`engine_args`), API key handed over with LoadCredential, start-up health gate, restart
policy and the GPU-safe sandboxing of shared/reference/hardening.md section 2.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from pathlib import Path

from autoglm_infra.common.secrets import Secret, SecretError
from autoglm_infra.common.systemd_exec import exec_line
from autoglm_infra.common.templates import render
from autoglm_infra.config.schema import Settings
from autoglm_infra.stages.python_env import venv as python_env
from autoglm_infra.stages.service.engine_args import (
    RUNTIME_DIRECTORY,
    EngineCommand,
    HubAlias,
    engine_command,
    served_model_name,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
UNIT_TEMPLATE = "autoglm-serve.service.j2"
HEALTH_GATE_SOURCE = TEMPLATES / "autoglm-health-gate.py"

UNIT_NAME = "autoglm-serve.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
HEALTH_GATE_PATH = "/usr/local/lib/autoglm/autoglm-health-gate"
HOST_PYTHON = "/usr/bin/python3"  # runs the health gate; present wherever pyinfra runs apt
CREDENTIAL_DIR = "/etc/autoglm/credentials"
CREDENTIAL_NAME = "api-key"
CREDENTIAL_PATH = f"{CREDENTIAL_DIR}/{CREDENTIAL_NAME}"
# Started after these when they exist (ordering only): persistenced keeps /dev/nvidia* up.
AFTER_UNITS = ("nvidia-persistenced.service",)


@dataclass(frozen=True)
class ServiceLayout:
    """Where the python env stage put things the unit needs."""

    venv: str
    user: str
    group: str
    cache_dir: str


def systemd_environment(name: str, value: str) -> str:
    """An Environment= assignment (specifiers expand there, `$` does not)."""
    text = f"{name}={value}".replace("%", "%%")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def health_url(settings: Settings) -> str:
    """Where the gate polls /health: the bound address, loopback for a wildcard bind."""
    addr = ipaddress.ip_address(settings.serve_host)
    if addr.is_unspecified:
        addr = ipaddress.ip_address("::1" if addr.version == 6 else "127.0.0.1")
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"http://{host}:{settings.serve_port}/health"


def ip_allow(settings: Settings) -> list[str]:
    """IPAddressAllow=: loopback, the bound address (self-connections), configured clients."""
    allowed = ["localhost"]
    addr = ipaddress.ip_address(settings.serve_host)
    if not (addr.is_loopback or addr.is_unspecified):
        allowed.append(str(addr))
    allowed += [a for a in settings.service_allow_from if a not in allowed]
    return allowed


def service_environment(cache_dir: str) -> dict[str, str]:
    """The python env stage's cache layout, plus HOME: the only paths the service writes."""
    return {
        "HOME": cache_dir,
        **python_env.cache_environment(cache_dir),
        # weights are pulled and verified by the model stage; the engine never downloads
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def key_wrapper(engine: EngineCommand) -> list[str]:
    """argv prefix handing the credential to the engine, then exec: exported into its key
    variable, or written as `api-key: '<key>'` (YAML single quotes, ' doubled) into its
    key config file, 0600 in the service's private runtime directory."""
    if engine.key_env is not None:
        var = engine.key_env
        script = (
            f'{var}="$(cat "$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}")" && [ -n "${var}" ] '
            f'|| {{ echo "no API key credential" >&2; exit 1; }}; export {var}; exec "$@"'
        )
    elif engine.key_config is not None:
        script = (
            f'k="$(cat "$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}")" && [ -n "$k" ] '
            '|| { echo "no API key credential" >&2; exit 1; }; umask 077; '
            """printf "api-key: '%s'\\n" "$(printf %s "$k" | sed "s/'/''/g")" """
            f'> {shlex.quote(engine.key_config)} || exit 1; unset k; exec "$@"'
        )
    else:
        return []
    return ["/bin/sh", "-c", script, "autoglm-serve"]


def hub_alias_command(alias: HubAlias, hub_cache: str) -> list[str]:
    """ExecStartPre= creating the hub-cache entry of the CPU engine (see HubAlias)."""
    repo = shlex.quote(f"{hub_cache}/{alias.repo_dir}")
    script = (
        f"mkdir -p {repo}/refs {repo}/snapshots && printf %s {alias.revision} > {repo}/refs/main"
        f" && ln -sfn {shlex.quote(alias.target)} {repo}/snapshots/{alias.revision}"
    )
    return ["/bin/sh", "-c", script]


def model_check_command(model_dir: str) -> list[str]:
    """ExecStartPre= failing with one clear journal line when the model is not there
    (instead of an engine traceback about the hub); counts toward the start limit."""
    config = shlex.quote(f"{model_dir}/config.json")
    message = shlex.quote(
        f"{model_dir}/config.json not found: model_dir is wrong or the model stage has not run"
    )
    return ["/bin/sh", "-c", f"test -r {config} || {{ echo {message} >&2; exit 1; }}"]


def render_unit(settings: Settings, layout: ServiceLayout) -> str:
    """The unit file's text for these settings."""
    engine = engine_command(settings, layout.venv)
    environment = {**service_environment(layout.cache_dir), **engine.environment}
    pre: list[list[str]] = [model_check_command(settings.model_dir)]
    if engine.hub_alias is not None:
        hub_cache = f"/run/{RUNTIME_DIRECTORY}/hub"
        environment["HF_HUB_CACHE"] = hub_cache
        pre.append(hub_alias_command(engine.hub_alias, hub_cache))
    deadline = max(settings.service_start_timeout_sec - 15, 15)
    return render(
        TEMPLATES,
        UNIT_TEMPLATE,
        unit_name=UNIT_NAME,
        engine=settings.serve_engine,
        model_name=served_model_name(settings),
        after=AFTER_UNITS,
        start_limit_interval_sec=settings.service_start_limit_interval_sec,
        start_limit_burst=settings.service_start_limit_burst,
        user=layout.user,
        group=layout.group,
        environment=[(k, systemd_environment(k, v)) for k, v in sorted(environment.items())],
        credential_name=CREDENTIAL_NAME,
        credential_path=CREDENTIAL_PATH,
        exec_start_pre=[exec_line(cmd) for cmd in pre],
        exec_start=exec_line(key_wrapper(engine) + engine.argv),
        health_gate=exec_line([HOST_PYTHON, HEALTH_GATE_PATH, health_url(settings), str(deadline)]),
        start_timeout_sec=settings.service_start_timeout_sec,
        restart_sec=settings.service_restart_sec,
        cache_dir=layout.cache_dir,
        runtime_directory=RUNTIME_DIRECTORY,
        ip_allow=ip_allow(settings),
    )


def health_gate_script() -> bytes:
    return HEALTH_GATE_SOURCE.read_bytes()


def api_key_file_content(secret: Secret) -> bytes:
    """The credential file's bytes; refuses keys an HTTP Authorization header cannot carry."""
    value = secret.reveal()
    if any(c.isspace() or not c.isprintable() for c in value):
        raise SecretError(
            f"the API key from {secret.source} contains spaces or control characters; "
            "use a single token such as the output of `openssl rand -hex 32`"
        )
    return (value + "\n").encode()
