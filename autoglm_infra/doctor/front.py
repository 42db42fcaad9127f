"""The doctor's row for the TLS front (serve_expose). Pure: no pyinfra import.

The engine exposed beyond loopback is the exposure check's failure; this row checks what
the front adds: something listens where it should, and its certificate is not expiring.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from autoglm_infra.common.checks import Check
from autoglm_infra.doctor.host import Listener
from autoglm_infra.stages.expose.front import CERT_PATH
from autoglm_infra.stages.expose.tls import RENEW_DAYS, days_left

NAME = "TLS front"
CONVERGE = "converge deploys/expose.py (CA-issued certificates are renewed there)"


def front_check(
    serve_expose: str,
    cert_pem: str,
    listeners: Sequence[Listener],
    now: dt.datetime | None = None,
) -> Check:
    address, _, port = serve_expose.rpartition(":")
    address = address.strip("[]")
    on_port = {entry.address for entry in listeners if entry.port == int(port)}
    if not on_port & {address, "0.0.0.0", "::", "*"}:
        return Check(
            NAME,
            "fail",
            f"nothing listens on {serve_expose}",
            f"systemctl status nginx.service; {CONVERGE}",
        )
    try:
        left = days_left(cert_pem.encode(), now)
    except ValueError:
        return Check(NAME, "fail", f"no readable certificate in {CERT_PATH}", CONVERGE)
    evidence = f"{serve_expose}: certificate valid {left:.0f} more days"
    if left <= 0:
        return Check(NAME, "fail", f"{serve_expose}: certificate expired", CONVERGE)
    if left < RENEW_DAYS:
        return Check(NAME, "warn", evidence, f"{CONVERGE}; your own: renew serve_expose_cert_file")
    return Check(NAME, "ok", evidence)
