"""Print read-only check results for the current host and fail it when any check failed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api.exceptions import PyinfraError

from autoglm_infra.common.checks import Check, failed, format_table, json_file_name, to_json
from autoglm_infra.pyinfra_ext.fleet import isolated

JSON_DIR_ENV = "AUTOGLM_CHECKS_JSON"


def report_checks(kind: str, checks: Sequence[Check]) -> None:
    """Log the table; with AUTOGLM_CHECKS_JSON=<dir>, also write <dir>/<host>.<kind>.json
    (a slash in the host name becomes `_`)."""
    logger.info(format_table(host.name, checks))
    if out_dir := os.environ.get(JSON_DIR_ENV):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Path(out_dir, json_file_name(host.name, kind)).write_text(to_json(host.name, checks) + "\n")
    if failed(checks):
        names = ", ".join(c.name for c in failed(checks))
        with isolated(kind):  # fails this host; the other hosts' tables still come
            raise PyinfraError(f"{kind} found problems on {host.name}: {names} (table above)")
