"""`python -m autoglm_infra.rollout INVENTORY [DEPLOY] --batch-size N [--max-failures M]`:
a rolling upgrade in health-gated batches (see autoglm_infra/pyinfra_ext/rollout.py)."""

import sys

from autoglm_infra.pyinfra_ext.rollout import main

if __name__ == "__main__":
    sys.exit(main())
