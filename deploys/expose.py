"""Stage 7 - expose: the TLS front (nginx) serving the loopback endpoint to other machines.

    pyinfra INVENTORY deploys/expose.py

The stage, its operations and templates live in autoglm_infra/stages/expose/.
"""

from autoglm_infra.stages.expose.deploy import expose

expose()
