"""`apt-get update` that waits for another apt's lock on the package lists. Pure.

`apt-get install` waits for dpkg's lock (DPkg::Lock::Timeout), but apt 2.6's `update` does
not wait for the lists' lock (/var/lib/apt/lists/lock): it fails at once with "Could not
get lock". That lock is held by apt-daily and cloud-init after boot, and by the
`apt-get update` of a converge whose controller was killed (apt is left to finish, see
APT_OPTS), so the next converge must wait for it, bounded, as for dpkg's lock.
"""

from __future__ import annotations

LOCK_WAIT_S = 300  # as DPkg::Lock::Timeout in APT_OPTS
LOCKED = "Could not get lock"  # apt's message under LC_ALL=C


def apt_update_command(options: str = "", wait_s: int = LOCK_WAIT_S) -> str:
    """Shell text: `apt-get <options> update -q`, retried each second while another process
    holds the lists' lock, up to `wait_s` seconds; then apt's error and what holds it.

    `options`: shell text placed before `update` (e.g. `$A`, `-o Dir::State::Lists=...`).
    Exit status 0 on success, 100 (apt's own) on failure; apt's output goes to stdout on
    success and to stderr on failure.
    """
    opts = f" {options}" if options else ""
    gave_up = (
        f"the package lists stayed locked for {wait_s} s by another apt (apt-daily, "
        "cloud-init or an earlier converge): wait for it or stop it, then converge again"
    )
    return (
        "( w=0; while :; do "
        f"out=$(LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get{opts} update -q 2>&1) && "
        "{ printf '%s\\n' \"$out\"; exit 0; }; "
        f'case $out in *"{LOCKED}"*) [ "$w" -lt {int(wait_s)} ] || '
        f"{{ printf '%s\\n%s\\n' \"$out\" '{gave_up}' >&2; exit 100; }}; "
        "w=$((w + 1)); sleep 1;; "
        "*) printf '%s\\n' \"$out\" >&2; exit 100;; esac; done )"
    )
