"""Whether this run is a `--dry` preview.

pyinfra's CLI keeps the flag to itself (it only decides not to execute the operations),
but facts run either way: a fact whose command would change the host asks here first.
"""

from __future__ import annotations

import sys


def previewing() -> bool:
    return "--dry" in sys.argv[1:]
