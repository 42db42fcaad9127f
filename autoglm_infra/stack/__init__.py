"""Pure NVIDIA stack resolver: driver branch/packages, CUDA, cuDNN and torch wheel per host.

Never imports pyinfra. Facts live in autoglm_infra/stack/nvidia_stack.yaml; see
resolver.resolve_stack.
"""

from __future__ import annotations

from autoglm_infra.stack.facts_table import (
    DEFAULT_TABLE_PATH,
    StackTable,
    StackTableError,
    default_stack_table,
    load_stack_table,
)
from autoglm_infra.stack.gpus import GpuDevice, GpuInfo, identify_gpu
from autoglm_infra.stack.resolver import (
    AptPackage,
    OsInfo,
    StackError,
    StackPlan,
    StackRequest,
    resolve_stack,
)

__all__ = [
    "DEFAULT_TABLE_PATH",
    "AptPackage",
    "GpuDevice",
    "GpuInfo",
    "OsInfo",
    "StackError",
    "StackPlan",
    "StackRequest",
    "StackTable",
    "StackTableError",
    "default_stack_table",
    "identify_gpu",
    "load_stack_table",
    "resolve_stack",
]
