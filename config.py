"""pyinfra settings for every run from this directory (pyinfra loads ./config.py)."""

from pyinfra import config

from autoglm_infra.pyinfra_ext.ssh_tuning import enable_tcp_nodelay

config.REQUIRE_PYINFRA_VERSION = "~=3.10"
# A failed host usually means a shared setting is wrong: stop before it spreads.
# `--fail-percent N` on the command line overrides this.
config.FAIL_PERCENT = 0
config.CONNECT_TIMEOUT = 15
# Stage uploads on disk, not a possibly small tmpfs /tmp.
config.TEMP_DIR = "/var/tmp"

enable_tcp_nodelay()
