"""pyinfra settings for every run from this directory (pyinfra loads ./config.py)."""

import atexit
import gc
import os

from pyinfra import config

from autoglm_infra.pyinfra_ext.speedups import enable_pyinfra_speedups
from autoglm_infra.pyinfra_ext.ssh_tuning import enable_tcp_nodelay
from autoglm_infra.pyinfra_ext.state_reads import enable_state_reads_at_connect

config.REQUIRE_PYINFRA_VERSION = "~=3.10"
# No FAIL_PERCENT: one broken host never stops the others (a setting wrong for every host
# is caught by the configuration check before any host changes). `--fail-percent N` stops
# the run once more than N% failed; the rollout (python -m autoglm_infra.rollout) stops
# between health-gated batches.
config.CONNECT_TIMEOUT = 15
# Stage uploads on disk, not a possibly small tmpfs /tmp.
config.TEMP_DIR = "/var/tmp"

# AUTOGLM_SSH_NODELAY=0 restores pyinfra's default (used by bench/noop_rerun.py as baseline).
if os.environ.get("AUTOGLM_SSH_NODELAY", "1") != "0":
    enable_tcp_nodelay()

# pyinfra's per-operation cost on the controller, same results (pyinfra_ext/speedups.py).
enable_pyinfra_speedups()

# A host with a converge on record takes its lock and runs its state reads as soon as it
# is connected, while the controller loads the stages (pyinfra_ext/state_reads.py).
enable_state_reads_at_connect()

# At exit, Python's last garbage collection walks every object that pyinfra, paramiko and
# the stages made (70-110 ms of each run, measured); the process is ending, so they are
# left to the OS. Exit handlers (the per-host summary) and log flushes still run; only
# finalizers of unreachable reference cycles are skipped.
atexit.register(gc.freeze)
