"""Stage 2 - proxy & mirrors: apt, pip, npm, Docker and shell proxies, mirrors, extra CAs.

    pyinfra INVENTORY deploys/network.py

The stage, its operations and templates live in autoglm_infra/stages/network/.
"""

from autoglm_infra.stages.network.deploy import network

network()
