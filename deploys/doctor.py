"""Doctor: read-only diagnosis of any host (also one we did not provision). Changes nothing.

    pyinfra inventories/prod.py deploys/doctor.py

One table per host: check, status (ok / warn / fail / skip), evidence and the fix. Set
AUTOGLM_CHECKS_JSON=<dir> for <dir>/<host>.doctor.json. Fails the host when a check fails.
Four remote commands: the host profile, the GPU probe, the TCP listeners and one for
everything else (model files, service unit, /health, venv, caches, containers, proxies and
mirrors, SELinux/AppArmor, mounts and access as the service user).
"""

from autoglm_infra.doctor.deploy import doctor

doctor()
