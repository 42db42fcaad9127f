"""Keys of the Docker mode: engine, NVIDIA container toolkit, image and hardened run flags."""

from __future__ import annotations

from autoglm_infra.config.fields import Keys


class DockerKeys(Keys):
    pass
