"""The NVIDIA stage's reboot alone, with the bound from AUTOGLM_TEST_REBOOT_TIMEOUT."""

import os
from collections.abc import Generator
from typing import Any

from pyinfra.api import operation

from autoglm_infra.stages.nvidia.ops import bounded_reboot


@operation(is_idempotent=False)
def reboot_bounded(timeout_s: int) -> Generator[Any, None, None]:
    yield from bounded_reboot(timeout_s)


reboot_bounded(
    name="NVIDIA: reboot (bounded)",
    timeout_s=int(os.environ.get("AUTOGLM_TEST_REBOOT_TIMEOUT", "20")),
)
