"""Keys of the verify stage: the smoke test that ends every converge."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from autoglm_infra.config.fields import Keys, key


class VerifyKeys(Keys):
    verify_chat: bool = key(
        True,
        "Send one real chat completion after /health and /v1/models (false: endpoints only).",
        "true | false",
    )
    verify_expect_reasoning: bool = key(
        True,
        "Require a non-trivial <think> block, as Open-AutoGLM's checker does for the real model.",
        "true | false",
    )
    verify_tries: Annotated[int, Field(ge=1, le=10)] = key(
        3, "Attempts per request on 429/503 (1 s, doubling).", "integer 1-10"
    )
