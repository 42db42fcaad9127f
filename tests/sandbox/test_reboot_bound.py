"""A reboot that never comes back ends the converge with one clear line, within its bound.

An nspawn sandbox host ends when it reboots (nothing restarts it), which is what a server
whose new kernel or initramfs does not boot looks like from the controller: SSH never
answers again. The NVIDIA stage's reboot (ops.bounded_reboot) must then fail the host with
its own error line, not pyinfra's traceback, and not wait longer than its bound allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from autoglm_testbed.converge import describe_failure, run_pyinfra
from autoglm_testbed.hosts import SandboxHost

HostFactory = Callable[..., list[SandboxHost]]
InventoryFactory = Callable[..., Path]


def test_a_host_that_never_returns_from_the_reboot_fails_cleanly_in_bounded_time(
    sandbox_hosts: HostFactory, sandbox_inventory: InventoryFactory
) -> None:
    (host,) = sandbox_hosts(1)
    inventory = sandbox_inventory([host])
    started = time.monotonic()
    result = run_pyinfra(
        inventory,
        "tests/sandbox/deploys/reboot_bounded.py",
        timeout=600,
        env={"AUTOGLM_TEST_REBOOT_TIMEOUT": "20"},
    )
    seconds = time.monotonic() - started
    output = result.stderr + str(result.report)
    assert result.returncode != 0, describe_failure(result)
    assert "did not answer SSH within 20 s of the reboot" in output, output[-3000:]
    assert "Traceback" not in output and "Unexpected error" not in output, output[-3000:]
    # 20 s of retries, each connect attempt bounded by pyinfra's connect timeout
    assert seconds < 300, f"{seconds:.0f} s"
