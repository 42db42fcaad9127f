"""Keys of the expose stage: the TLS front (nginx) that serves the engine beyond loopback.

The engine stays on loopback; the front checks a key per client, allows only the
OpenAI-compatible routes and limits each client's request rate. The certificate checks
run here, on the controller, so a bad certificate stops the run before any host changes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Self

from pydantic import AfterValidator, Field, model_validator

from autoglm_infra.config.fields import Keys, key
from autoglm_infra.config.keys_service import controller_path, ip_network
from autoglm_infra.stages.expose.tls import TlsError, load_user_pair

_CLIENT = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")


def listen_address(value: str) -> str:
    """'ADDRESS:PORT' ('[v6]:PORT' for IPv6), never loopback."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("must be ADDRESS:PORT, e.g. 192.0.2.10:443 or [2001:db8::1]:443")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(
            "must be ADDRESS:PORT with an IP address (not a host name), e.g. 192.0.2.10:443"
        ) from None
    if address.version == 6 and not bracketed:
        raise ValueError("an IPv6 address needs brackets: [2001:db8::1]:443")
    if address.is_loopback:
        raise ValueError(
            "is a loopback address: exposing there reaches no other machine; give the "
            "host's network address (or 0.0.0.0:443), or unset serve_expose"
        )
    return value


def client_name(value: str) -> str:
    if not _CLIENT.match(value):
        raise ValueError(
            f"client {value!r} is not a valid name: lower-case letter first, then lower-case "
            "letters, digits, '_' or '-' (at most 48), e.g. phone-lab-1"
        )
    return value


class ExposeKeys(Keys):
    serve_expose: Annotated[str, AfterValidator(listen_address)] | None = key(
        None,
        "ADDRESS:PORT where an nginx TLS front serves the endpoint to other machines "
        "(per-client keys, route allowlist, rate limits); None: loopback only.",
        "ADDRESS:PORT (not loopback) or None",
    )
    serve_expose_clients: list[Annotated[str, AfterValidator(client_name)]] = key(
        [],
        "Clients given a key by the front; removing one revokes its key at the next converge.",
        "list of unique names (a-z, 0-9, _ -)",
    )
    serve_expose_secrets_dir: Annotated[str, AfterValidator(controller_path)] = key(
        "~/.config/autoglm-infra/expose",
        "Controller directory (one per deployment) holding the front's CA, server "
        "certificates and the client key files to hand out; the CA key never leaves it.",
        "path on the controller",
    )
    serve_expose_cert_file: Annotated[str, AfterValidator(controller_path)] | None = key(
        None,
        "Controller file with your own certificate chain (PEM) for the front; None issues "
        "one from the deployment's CA.",
        "path on the controller or None",
    )
    serve_expose_key_file: Annotated[str, AfterValidator(controller_path)] | None = key(
        None,
        "Controller file (mode 600) with the private key of serve_expose_cert_file.",
        "path on the controller or None",
    )
    serve_expose_rate_per_minute: Annotated[int, Field(ge=1, le=60000)] = key(
        60,
        "Requests per minute each client may make (429 with Retry-After beyond).",
        "integer 1-60000",
    )
    serve_expose_burst: Annotated[int, Field(ge=0, le=10000)] = key(
        10, "Requests a client may make at once above its rate before 429.", "integer 0-10000"
    )
    serve_expose_max_body_mb: Annotated[int, Field(ge=1, le=1024)] = key(
        64,
        "Largest request body in MiB (Open-AutoGLM sends up to 10 base64 screenshots).",
        "integer 1-1024",
    )
    serve_expose_timeout_sec: Annotated[int, Field(ge=10, le=3600)] = key(
        600, "Seconds the front waits for the engine's answer to one request.", "integer 10-3600"
    )
    serve_expose_health: bool = key(
        False, "Serve an unauthenticated /health (status only) through the front.", "true | false"
    )
    serve_metrics: Annotated[str, AfterValidator(listen_address)] | None = key(
        None,
        "ADDRESS:PORT of a separate TLS listener (the front's certificate) for Prometheus: "
        "/metrics/engine and /metrics/node (Debian's node exporter), with a bearer token.",
        "ADDRESS:PORT (not loopback) or None",
    )
    serve_metrics_allow: list[Annotated[str, AfterValidator(ip_network)]] = key(
        [],
        "Source networks allowed to scrape serve_metrics (all others get 403).",
        "list of IP addresses / CIDRs",
    )

    def _metrics_checks(self) -> None:
        assert self.serve_metrics is not None
        if self.serve_expose is None:
            raise ValueError(
                "serve_metrics: needs serve_expose (it shares the front's nginx and certificate)"
            )
        if not self.serve_metrics_allow:
            raise ValueError(
                "serve_metrics_allow: list the scraper's address or network (e.g. your "
                "Prometheus host's address); an empty list would let anyone try the token"
            )
        ports = {self.serve_expose.rpartition(":")[2], str(getattr(self, "serve_port", ""))}
        if self.serve_metrics.rpartition(":")[2] in ports:
            raise ValueError(
                "serve_metrics: needs a port of its own (not serve_expose's or serve_port's)"
            )

    @model_validator(mode="after")
    def _expose_cross_checks(self) -> Self:
        clients = self.serve_expose_clients
        duplicates = sorted({c for c in clients if clients.count(c) > 1})
        if duplicates:
            raise ValueError(
                f"serve_expose_clients: {', '.join(duplicates)} listed more than once; "
                "each client gets one key, list it once"
            )
        if (self.serve_expose_cert_file is None) != (self.serve_expose_key_file is None):
            raise ValueError(
                "serve_expose_cert_file: give it together with serve_expose_key_file, or "
                "neither (the deployment's CA then issues the certificate)"
            )
        if self.serve_metrics is not None:
            self._metrics_checks()
        if self.serve_expose is None:
            return self
        serve_port = getattr(self, "serve_port", None)
        if self.serve_expose.rpartition(":")[2] == str(serve_port):
            raise ValueError(
                f"serve_expose: port {serve_port} is the engine's own (serve_port) on this "
                "host; give the front another port, e.g. 443"
            )
        serve_host = str(getattr(self, "serve_host", "127.0.0.1"))
        if not ipaddress.ip_address(serve_host).is_loopback:
            raise ValueError(
                f"serve_host: {serve_host} exposes the engine itself next to the front "
                "(its unauthenticated routes too); keep it on 127.0.0.1 when serve_expose is set"
            )
        if self.serve_expose_cert_file is not None and self.serve_expose_key_file is not None:
            try:  # the stage loads them again; checked here so nothing changes on a bad pair
                load_user_pair(self.serve_expose_cert_file, self.serve_expose_key_file)
            except TlsError as exc:
                raise ValueError(f"{exc.key}: {exc.reason}") from None
        return self
