"""pyinfra operations of the model service stage (thin: decisions live in service_state).

Every operation compares against the stage's one `ServiceSnapshotFact` and calls
host.noop on the branches that do nothing, so a converged host costs one command.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator, Sequence
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, operation

from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.service.state import (
    ServiceSnapshot,
    parse_service_snapshot,
    record_inputs_command,
    service_snapshot_script,
    start_verb,
)


class ServiceSnapshotFact(TypedFact[ServiceSnapshot]):
    """Managed files, unit state, service user and directories, in one command."""

    def command(
        self,
        unit_name: str,
        user: str,
        files: Sequence[str] = (),
        dirs: Sequence[str] = (),
        read_text: Sequence[str] = (),
    ) -> str:
        return service_snapshot_script(unit_name, user, files, dirs, read_text)

    def process(self, output: list[str]) -> ServiceSnapshot:
        return parse_service_snapshot(output)


@operation()
def directory(path: str, current: str | None, mode: str, owner: str = "root",
              group: str = "root") -> Generator[Any, None, None]:  # fmt: skip
    """Ensure a directory exists with mode/owner (`current` is 'mode owner group' or None).

    + path: directory
    + current: 'mode owner group' from the snapshot, None when missing
    + mode: octal mode
    + owner: owner
    + group: group

    **Example:**

    .. code:: python

        directory(name="media", path="/srv/autoglm/media", current=snap.dirs[...],
                  mode="755")
    """
    if current == f"{mode.lstrip('0')} {owner} {group}":
        host.noop(f"{path} exists")
        return
    yield StringCommand(f"install -d -m {mode} -o {owner} -g {group} {shlex.quote(path)}")


@operation()
def generate_api_key(path: str, exists: bool) -> Generator[Any, None, None]:
    """Create a random API key on the host, once (0600 root); the key never leaves it.

    + path: key file on the host
    + exists: the snapshot found it

    **Example:**

    .. code:: python

        generate_api_key(name="API key", path="/etc/autoglm/credentials/api-key",
                         exists=snap.files.files.get(path) is not None)
    """
    if exists:
        host.noop(f"{path} exists (generated earlier or uploaded)")
        return
    q = shlex.quote(path)
    tmp = shlex.quote(path + ".autoglm-new")
    # 48 alphanumerics from the kernel CSPRNG (~285 bits); umask makes it 0600 from birth
    yield StringCommand(
        f"umask 077 && mkdir -p $(dirname {q}) && "
        f"LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 48 > {tmp} && mv -f {tmp} {q}"
    )


@operation()
def run_service(
    unit_name: str,
    reload: bool,
    enable: bool,
    reasons: Sequence[str],
    inputs: Sequence[str],
    log_lines: int = 30,
) -> Generator[Any, None, None]:
    """daemon-reload (unit changed), enable, and (re)start when `reasons` say so.

    A start waits for the unit's health gate; when it fails, the command prints the
    unit's last log lines and fails the operation, so the converge reports it. After a
    good start the inputs record is written from the host's files.

    + unit_name: the service's unit
    + reload: the unit file changed: daemon-reload
    + enable: the unit is not enabled
    + reasons: why it must (re)start; empty: no start
    + inputs: files whose digests are recorded after a good start
    + log_lines: journal lines shown when the start fails

    **Example:**

    .. code:: python

        run_service(name="Service: run", unit_name="autoglm-serve.service",
                    reload=True, enable=True, reasons=["service is inactive"],
                    inputs=["/etc/systemd/system/autoglm-serve.service"])
    """
    unit = shlex.quote(unit_name)
    if not (reload or enable or reasons):
        host.noop(f"{unit_name} is active, enabled and running the current configuration")
        return
    if reload:
        yield StringCommand("systemctl daemon-reload")
    if enable:
        yield StringCommand(f"systemctl enable {unit} 2>&1")
    if not reasons:
        return
    # A deliberate (re)start must not count toward the crash-loop limit, and a unit that
    # hit the limit refuses to start until it is reset: StartLimitBurst counts crashes.
    yield StringCommand(f"systemctl reset-failed {unit}")
    why = shlex.quote(f"(re)starting {unit_name}: " + "; ".join(reasons))
    failed = shlex.quote(f"{unit_name} did not start or did not become healthy. Last log lines:")
    yield StringCommand(
        f"echo {why}; systemctl {start_verb(reasons)} {unit} || {{ rc=$?; echo {failed} >&2; "
        f"journalctl -u {unit} -n {log_lines} --no-pager -o short-iso >&2; exit $rc; }}"
    )
    yield StringCommand(record_inputs_command(inputs))
