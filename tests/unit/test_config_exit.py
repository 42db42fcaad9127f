"""config.py (loaded by every pyinfra run from the project) skips Python's last garbage
collection at exit: exit handlers still run, unreachable cycles are left to the OS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import atexit
{load}
atexit.register(lambda: print("exit handler ran", flush=True))
class Cycle:
    def __del__(self):
        print("collected at exit", flush=True)
first, second = Cycle(), Cycle()
first.other, second.other = second, first  # only the cyclic collector can free them
del first, second
"""


# as pyinfra loads it: in the context of a run's Config
LOAD_CONFIG = """
from pyinfra.api import Config
from pyinfra.context import ctx_config
with ctx_config.use(Config()):
    exec(compile(open("config.py").read(), "config.py", "exec"))
"""


def run_probe(load: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(load=load)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def test_without_config_the_last_collection_frees_the_cycle() -> None:
    assert "collected at exit" in run_probe("")  # the probe can tell


def test_with_config_exit_handlers_run_and_the_last_collection_is_skipped() -> None:
    out = run_probe(LOAD_CONFIG)
    assert "exit handler ran" in out
    assert "collected at exit" not in out
