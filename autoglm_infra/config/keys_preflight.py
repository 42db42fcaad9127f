"""Keys of the preflight stage: the least a host must have before anything changes."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from autoglm_infra.common.converge_lock import DEFAULT_WAIT_S, MAX_WAIT_S
from autoglm_infra.config.fields import Keys, key


class PreflightKeys(Keys):
    # Open-AutoGLM's minimum is 16 GB RAM / 4 cores (64 GB / 16 cores recommended).
    preflight_min_cpus: Annotated[int, Field(ge=1)] = key(
        4, "Refuse hosts with fewer CPU cores (Open-AutoGLM's minimum is 4).", "integer >= 1"
    )
    preflight_min_mem_gib: Annotated[float, Field(ge=0)] = key(
        16, "Refuse hosts with less RAM in GiB (Open-AutoGLM's minimum is 16).", "number >= 0"
    )
    preflight_min_disk_gib: Annotated[float, Field(ge=0)] = key(
        40,
        "Refuse hosts with less free disk (GiB) at model_dir: ~20 GB weights plus caches.",
        "number >= 0",
    )
    converge_lock_wait: Annotated[int, Field(ge=0, le=MAX_WAIT_S)] = key(
        DEFAULT_WAIT_S,
        "Seconds a converge waits for another one holding the same host (the host-side "
        "lock in /run/lock) before it stops that host naming the holder; 0: do not wait.",
        "integer 0-86400",
    )
