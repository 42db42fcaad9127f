"""Operations of the expose stage (thin: what to write is decided in front.py)."""

from __future__ import annotations

import shlex
from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, operation

from autoglm_infra.stages.expose.front import CONFIG_TEST


@operation()
def derive_engine_auth(
    source: str, env_file: bool, dest: str, record: str, in_sync: bool, group: str = "root"
) -> Generator[Any, None, None]:
    """Make the front's engine-key include from the engine's key file on the host.

    For keys the host made itself (they never reach the controller). The include and a
    record of the key file's sha256 are written root 0600 (the include 0640 for `group`);
    the key passes through the shell's builtin printf only, never a command line.

    + source: the engine's key file (raw key, or VLLM_API_KEY= env file)
    + env_file: `source` is an env file
    + dest: the include nginx reads
    + record: where the key file's sha256 is recorded
    + in_sync: the snapshot found `dest` made from the current key file
    + group: the group that may read `dest` (the front's)

    **Example:**

    .. code:: python

        derive_engine_auth(name="engine key", source="/etc/autoglm/credentials/api-key",
                           env_file=False, dest="/etc/nginx/autoglm/engine-auth.conf",
                           record="/etc/nginx/autoglm/engine-auth.source", in_sync=False)
    """
    if in_sync:
        host.noop(f"{dest} made from the current {source}")
        return
    src, out, rec = shlex.quote(source), shlex.quote(dest), shlex.quote(record)
    read = f"sed -n 's/^VLLM_API_KEY=//p' {src}" if env_file else f"cat {src}"
    bad = shlex.quote(
        f"the engine's API key in {source} is missing or has characters nginx cannot pass on; "
        "set service_api_key_env to a token such as `openssl rand -hex 32`"
    )
    yield StringCommand(
        f"umask 077 && k=$({read} | head -n 1) && case \"$k\" in ''|*[!A-Za-z0-9._~+/=-]*) "
        f"printf '%s\\n' {bad} >&2; exit 1;; esac && "
        f'printf \'proxy_set_header Authorization "Bearer %s";\\n\' "$k" > {out}.new && '
        f"chgrp {shlex.quote(group)} {out}.new && chmod 640 {out}.new && "
        f"mv -f {out}.new {out} && sha256sum < {src} | cut -d' ' -f1 > {rec}"
    )


@operation()
def start_front(unit: str, active: str, enabled: str) -> Generator[Any, None, None]:
    """Check the configuration, enable and (re)start the front when it is not running.

    + unit: nginx's unit
    + active: its ActiveState from the snapshot
    + enabled: its UnitFileState from the snapshot

    **Example:**

    .. code:: python

        start_front(name="front", unit="nginx.service", active="inactive", enabled="")
    """
    if active == "active" and enabled == "enabled":
        host.noop(f"{unit} is active and enabled")
        return
    q = shlex.quote(unit)
    yield StringCommand(f"{CONFIG_TEST} 2>&1")
    yield StringCommand(f"systemctl daemon-reload && systemctl enable {q} 2>&1")
    yield StringCommand(
        f"systemctl restart {q} || {{ journalctl -u {q} -n 30 --no-pager >&2; exit 1; }}"
    )


@operation()
def withdraw_front(unit: str, front_dir: str, present: bool) -> Generator[Any, None, None]:
    """Stop and disable the front and remove its certificates and keys (exposure unset).

    + unit: nginx's unit
    + front_dir: the front's root-only directory
    + present: the snapshot found `front_dir` (an earlier converge exposed the host)

    **Example:**

    .. code:: python

        withdraw_front(name="unexpose", unit="nginx.service",
                       front_dir="/etc/nginx/autoglm", present=True)
    """
    if not present:
        host.noop("no front: the endpoint stays on loopback")
        return
    q = shlex.quote(unit)
    # nginx removed by hand: nothing to stop, and the converge must not fail on it
    yield StringCommand(
        f'if [ "$(systemctl show -p LoadState --value {q})" != not-found ]; then '
        f"systemctl disable --now {q} 2>&1; fi"
    )
    yield StringCommand(f"rm -rf {shlex.quote(front_dir)}")
