"""apt_lock's commands against this machine's real apt-get and dpkg, on private state.

The locks are taken the way apt takes it (a POSIX record lock, fcntl F_SETLK) by a
child process, as an orphaned `apt-get update` of a killed converge holds it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm_infra.common.apt_lock import apt_update_command, waiting_for_apt_lock

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt")

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def private_options(root: Path) -> str:
    """No sources and lists/caches under `root`: apt-get update runs offline in milliseconds."""
    for sub in ("lists/partial", "cache/archives/partial", "sources.d"):
        (root / sub).mkdir(parents=True)
    (root / "sources.list").write_text("")
    return (
        f"-o Dir::Etc::SourceList={root}/sources.list -o Dir::Etc::SourceParts={root}/sources.d "
        f"-o Dir::State::Lists={root}/lists -o Dir::Cache={root}/cache"
    )


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def run(command: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False
    )
    return done, time.monotonic() - start


def plain_fails_then_wrapped_waits(
    lock: Path, plain: str, wrapped: str, refusal: str
) -> subprocess.CompletedProcess[str]:
    """With `lock` held for 3 s: `plain` fails at once naming it (the behaviour the wait
    exists for), `wrapped` succeeds after waiting."""
    holder = hold_lock(lock, 3)
    try:
        refused, _ = run(plain)
        assert refused.returncode != 0, refused
        assert refusal in refused.stdout + refused.stderr, refused
        waited, seconds = run(wrapped)
    finally:
        holder.kill()
        holder.wait()
    assert waited.returncode == 0, waited.stderr
    assert seconds >= 1.5, f"returned after {seconds:.1f} s while the lock was held for 3 s"
    return waited


def test_update_waits_for_the_lists_lock(tmp_path: Path) -> None:
    options = private_options(tmp_path)
    waited = plain_fails_then_wrapped_waits(
        tmp_path / "lists" / "lock",
        f"LC_ALL=C apt-get {options} update -q",
        apt_update_command(options, wait_s=30),
        "Could not get lock",
    )
    assert "Reading package lists" in waited.stdout


def test_gives_up_after_the_bound_naming_the_lock(tmp_path: Path) -> None:
    options = private_options(tmp_path)
    holder = hold_lock(tmp_path / "lists" / "lock", 60)
    try:
        done, seconds = run(apt_update_command(options, wait_s=2))
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 100
    assert seconds < 15
    assert "Could not get lock" in done.stderr
    assert "apt's lock stayed held for 2 s" in done.stderr


def test_other_errors_fail_at_once(tmp_path: Path) -> None:
    options = private_options(tmp_path)
    (tmp_path / "sources.list").write_text("deb this-is-not-a-source\n")
    done, seconds = run(apt_update_command(options, wait_s=30))
    assert done.returncode == 100
    assert seconds < 10
    assert "Malformed" in done.stderr or "E:" in done.stderr


def test_dpkg_waits_for_its_frontend_lock(tmp_path: Path) -> None:
    """apt-mark hold runs `dpkg --set-selections`, which fails at once on a held lock."""
    admin = tmp_path / "dpkg"
    (admin / "updates").mkdir(parents=True)
    (admin / "status").write_text("")
    selections = f"dpkg --admindir={admin} --set-selections </dev/null"
    plain_fails_then_wrapped_waits(
        admin / "lock-frontend",
        f"LC_ALL=C {selections}",
        waiting_for_apt_lock(selections, wait_s=30),
        "lock was locked",
    )
