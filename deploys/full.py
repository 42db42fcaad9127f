"""Converge a host end to end: every stage that exists, in the order of DESIGN.md.

pyinfra inventories/prod.py deploys/full.py
"""

from pyinfra import local

STAGES = [
    "deploys/preflight.py",
    "deploys/nvidia.py",
]

for stage in STAGES:
    local.include(stage)
