"""Stage 4 - python env: service user, cache dirs, and a venv installed from a hash lock.

    pyinfra INVENTORY deploys/python_env.py

The stage, its operations and templates live in autoglm_infra/stages/python_env/.
"""

from autoglm_infra.stages.python_env.deploy import python_env

python_env()
