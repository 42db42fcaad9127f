"""Stage 6 - service (venv mode): the hardened systemd unit serving the model, healthy.

    pyinfra INVENTORY deploys/service.py

The stage, its operations and templates live in autoglm_infra/stages/service/.
"""

from autoglm_infra.stages.service.deploy import service

service()
