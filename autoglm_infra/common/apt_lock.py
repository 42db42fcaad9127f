"""apt and dpkg commands that wait for another apt's lock instead of failing at once. Pure.

`apt-get install` waits for dpkg's lock (DPkg::Lock::Timeout), but on Debian 12 (apt 2.6,
dpkg 1.21) `apt-get update` does not wait for the lists' lock (/var/lib/apt/lists/lock)
and `apt-mark hold` runs `dpkg --set-selections`, which does not wait for dpkg's: both fail
at once. Those locks are held by apt-daily and cloud-init after boot, and by the apt of a
converge whose controller was killed (apt is left to finish, see APT_OPTS), so the next
converge waits for them, bounded, as for dpkg's lock.
"""

from __future__ import annotations

import shlex

LOCK_WAIT_S = 300  # as DPkg::Lock::Timeout in APT_OPTS
# apt's and dpkg's messages under LC_ALL=C
LOCKED = (
    "Could not get lock",
    "lock was locked by another process",
    "database is locked by another process",
)


def waiting_for_apt_lock(command: str, wait_s: int = LOCK_WAIT_S) -> str:
    """Shell text: `command` (an apt/dpkg command line, run under LC_ALL=C), retried each
    second while another process holds apt's or dpkg's lock, up to `wait_s` seconds; then
    the lock error and what to do.

    Exit status 0 on success, 100 (apt's own) on failure; the command's output goes to
    stdout on success and to stderr on failure.
    """
    gave_up = (
        f"apt's lock stayed held for {wait_s} s by another apt (apt-daily, cloud-init or an "
        "earlier converge): wait for it or stop it, then converge again"
    )
    locked = "|".join(f'*"{text}"*' for text in LOCKED)
    return (
        "( w=0; while :; do "
        f"out=$(export LC_ALL=C DEBIAN_FRONTEND=noninteractive; {{ {command}; }} 2>&1) && "
        '{ [ -z "$out" ] || printf \'%s\\n\' "$out"; exit 0; }; '
        f'case $out in {locked}) [ "$w" -lt {int(wait_s)} ] || '
        f"{{ printf '%s\\n%s\\n' \"$out\" {shlex.quote(gave_up)} >&2; exit 100; }}; "
        "w=$((w + 1)); sleep 1;; "
        "*) printf '%s\\n' \"$out\" >&2; exit 100;; esac; done )"
    )


def apt_update_command(options: str = "", wait_s: int = LOCK_WAIT_S) -> str:
    """`apt-get <options> update -q`, waiting for the lists' lock.

    `options`: shell text placed before `update` (e.g. `$A`, `-o Dir::State::Lists=...`)."""
    opts = f" {options}" if options else ""
    return waiting_for_apt_lock(f"apt-get{opts} update -q", wait_s)
