"""Keys of the model service stage: systemd unit, engine arguments, API key, health gate."""

from __future__ import annotations

from autoglm_infra.config.fields import Keys


class ServiceKeys(Keys):
    pass
