"""Keys of the python env stage: service user, venv and hash-locked requirements."""

from __future__ import annotations

from autoglm_infra.config.fields import Keys


class PythonEnvKeys(Keys):
    pass
