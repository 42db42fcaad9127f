"""Stage 8 - verify: the endpoint answers /health, lists the model and completes a chat.

    pyinfra INVENTORY deploys/verify.py

The stage, its operations and templates live in autoglm_infra/stages/verify/.
"""

from autoglm_infra.stages.verify.deploy import verify

verify()
