"""Stage 1 - preflight: validate configuration and refuse hosts that cannot work.

    pyinfra INVENTORY deploys/preflight.py

The stage, its operations and templates live in autoglm_infra/stages/preflight/.
"""

from autoglm_infra.stages.preflight.deploy import preflight

preflight()
