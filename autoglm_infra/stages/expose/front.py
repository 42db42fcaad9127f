"""The front's files on the host, rendered from settings (pure: no pyinfra import).

nginx from Debian's packages reads /etc/nginx/nginx.conf, which this stage owns whole
(Debian's default site on port 80 is never loaded). nginx runs as www-data from the start
(the hardening drop-in gives it only CAP_NET_BIND_SERVICE), so the private key, the key map
and the engine's own key in /etc/nginx/autoglm are root:www-data 0640: readable by nginx
and root only. (A root master would not keep them from its workers either: they inherit
the parsed configuration.)
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path

from autoglm_infra.common.managed_file import ManagedFile
from autoglm_infra.common.secrets import Secret
from autoglm_infra.common.templates import render
from autoglm_infra.config.schema import Settings
from autoglm_infra.stages.docker.args import API_KEY_FILE, ENV_FILE
from autoglm_infra.stages.expose.tls import TlsError
from autoglm_infra.stages.service.unit import CREDENTIAL_PATH

TEMPLATES = Path(__file__).parent / "templates"
UNIT_NAME = "nginx.service"
USER = "www-data"  # Debian's nginx user; base-passwd makes it on every Debian host
PACKAGES = ("nginx",)
NGINX_BINARY = "/usr/sbin/nginx"
NGINX_CONF = "/etc/nginx/nginx.conf"
FRONT_DIR = "/etc/nginx/autoglm"
CERT_PATH = f"{FRONT_DIR}/server.crt"
KEY_PATH = f"{FRONT_DIR}/server.key"
KEY_MAP_PATH = f"{FRONT_DIR}/clients.map"
ENGINE_AUTH_PATH = f"{FRONT_DIR}/engine-auth.conf"
# sha256 of the engine key file the engine-auth include was made from (host-made keys)
ENGINE_AUTH_SOURCE = f"{FRONT_DIR}/engine-auth.source"
HARDENING_PATH = "/etc/systemd/system/nginx.service.d/autoglm-hardening.conf"
# nginx checks its configuration as the user it runs as (it opens the logs and keys)
CONFIG_TEST = f"runuser -u {USER} -- nginx -t -q"
PID_FILE = "/run/nginx/nginx.pid"  # RuntimeDirectory=nginx: www-data cannot write /run
TEMP_DIR = "/var/cache/autoglm-nginx"  # request bodies; /var/lib/nginx is root's
METRICS_AUTH_PATH = f"{FRONT_DIR}/metrics-auth.conf"
NODE_EXPORTER = "prometheus-node-exporter"
NODE_EXPORTER_BINARY = "/usr/bin/prometheus-node-exporter"
# Debian's unit reads ARGS from here; its default listens on every interface
NODE_EXPORTER_DEFAULTS = "/etc/default/prometheus-node-exporter"
NODE_EXPORTER_LISTEN = "127.0.0.1:9100"
SCRAPER = "prometheus"  # the metrics token's name under <secrets dir>/scrapers/
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
# Mozilla's "intermediate" TLS 1.2 suites: ECDHE key exchange with AEAD ciphers only
CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def engine_url(settings: Settings) -> str:
    address = ipaddress.ip_address(settings.serve_host)
    if address.is_unspecified:  # refused by the schema when exposed; kept for safety
        address = ipaddress.ip_address("127.0.0.1")
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{settings.serve_port}"


def retry_after(rate_per_minute: int) -> int:
    """Seconds until a client over its limit may send again (one request's worth)."""
    return max(1, math.ceil(60 / rate_per_minute))


def render_nginx_conf(settings: Settings) -> bytes:
    assert settings.serve_expose is not None
    text = render(
        TEMPLATES,
        "nginx.conf.j2",
        listen=settings.serve_expose,
        pid=PID_FILE,
        temp=TEMP_DIR,
        cert=CERT_PATH,
        key=KEY_PATH,
        key_map=KEY_MAP_PATH,
        engine_auth=ENGINE_AUTH_PATH,
        ciphers=CIPHERS,
        rate=settings.serve_expose_rate_per_minute,
        burst=settings.serve_expose_burst,
        retry_after=retry_after(settings.serve_expose_rate_per_minute),
        max_body_mb=settings.serve_expose_max_body_mb,
        timeout=settings.serve_expose_timeout_sec,
        health=settings.serve_expose_health,
        routes=ROUTES,
        engine=engine_url(settings),
        metrics=settings.serve_metrics,
        metrics_allow=settings.serve_metrics_allow,
        metrics_auth=METRICS_AUTH_PATH,
        node_exporter=f"http://{NODE_EXPORTER_LISTEN}",
    )
    return text.encode()


def engine_auth_content(secret: Secret) -> bytes:
    """The include that gives the engine its own key (the clients' keys stop at the front)."""
    value = secret.reveal()
    if not value or any(c in value for c in '"\\$;{}') or any(c.isspace() for c in value):
        raise TlsError(
            "service_api_key_env",
            f"the API key from {secret.source} has characters nginx cannot pass on "
            '(space, ", \\, $, ;, braces); use e.g. the output of `openssl rand -hex 32`',
        )
    return f'proxy_set_header Authorization "Bearer {value}";\n'.encode()


def engine_key_source(settings: Settings) -> tuple[str, bool]:
    """(engine key file on the host, True when it is a VLLM_API_KEY= env file)."""
    if settings.serve_mode == "venv":
        return CREDENTIAL_PATH, False
    if settings.docker_api_key_delivery == "secret-mount":
        return API_KEY_FILE, False
    return ENV_FILE, True


def hardening_dropin() -> bytes:
    return render(TEMPLATES, "nginx-hardening.conf.j2", pid=PID_FILE, temp=TEMP_DIR).encode()


def packages(settings: Settings) -> dict[str, str]:
    """Debian package -> the binary whose presence stands for it."""
    wanted = {"nginx": NGINX_BINARY}
    if settings.serve_metrics is not None:
        wanted[NODE_EXPORTER] = NODE_EXPORTER_BINARY
    return wanted


def front_files(
    settings: Settings,
    cert_pem: bytes,
    key_pem: bytes,
    keys: dict[str, Secret],
    scraper: Secret | None = None,
) -> list[ManagedFile]:
    """Every file the front needs except the engine's key (see `engine_auth_content`);
    `scraper`: the metrics listener's token when serve_metrics is set."""
    from autoglm_infra.stages.expose.clients import key_map, metrics_auth

    files = [
        ManagedFile(NGINX_CONF, render_nginx_conf(settings)),
        ManagedFile(CERT_PATH, cert_pem),
        ManagedFile(KEY_PATH, key_pem, "640", USER),
        ManagedFile(KEY_MAP_PATH, key_map(keys), "640", USER),
        ManagedFile(HARDENING_PATH, hardening_dropin()),
    ]
    if scraper is not None:
        files += [
            ManagedFile(METRICS_AUTH_PATH, metrics_auth(scraper), "640", USER),
            ManagedFile(
                NODE_EXPORTER_DEFAULTS,
                f'# Managed by autoglm-infra: the front serves it\nARGS="--web.listen-address='
                f'{NODE_EXPORTER_LISTEN}"\n'.encode(),
            ),
        ]
    return files


def reload_command(unit: str, wait_s: int = 15) -> str:
    """`systemctl reload`, then wait until no worker of the old configuration still accepts
    connections: the reload only signals the master, and a revoked key would otherwise
    still pass for the moment the old workers keep accepting. Old workers finishing their
    requests are titled "worker process is shutting down" and no longer accept."""
    workers = 'pgrep -P "$m" -f "worker process$" || true'
    return (
        f"m=$(cat {PID_FILE}) && old=$({workers}) && systemctl reload {unit} && i=0 && "
        f"while [ $i -lt {wait_s * 10} ]; do now=$({workers}); stale=; "
        'for p in $old; do printf "%s\\n" "$now" | grep -qx "$p" && stale=1; done; '
        '[ -n "$now" ] && [ -z "$stale" ] && break; i=$((i + 1)); sleep 0.1; done && '
        f'[ $i -lt {wait_s * 10} ] || {{ echo "{unit}: the reloaded configuration did not '
        f'take over within {wait_s} s" >&2; false; }}'
    )
