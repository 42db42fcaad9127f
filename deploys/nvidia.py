"""Stage 3 - NVIDIA: trusted repository, driver + CUDA + cuDNN at pinned versions, held.

    pyinfra INVENTORY deploys/nvidia.py

The stage, its operations and templates live in autoglm_infra/stages/nvidia/.
"""

from autoglm_infra.stages.nvidia.deploy import nvidia

nvidia()
