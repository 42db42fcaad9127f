"""Stage 5 - model: the pinned weights in model_dir, verified, at the cost of one command.

    pyinfra INVENTORY deploys/model.py

The stage, its operations and templates live in autoglm_infra/stages/model/.
"""

from autoglm_infra.stages.model.deploy import model

model()
