"""Keys of the model stage: which weights, from where, to which directory."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from autoglm_infra.config.fields import AbsolutePath, HttpUrl, Keys, Text, key, non_empty

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def repo_id(value: str) -> str:
    if not _REPO_ID.match(value):
        raise ValueError("must look like 'owner/name', e.g. 'zai-org/AutoGLM-Phone-9B'")
    return value


class ModelKeys(Keys):
    model_repo: Annotated[str, AfterValidator(repo_id)] = key(
        "zai-org/AutoGLM-Phone-9B",
        "Hub repository of the model (or its -Multilingual twin).",
        "owner/name",
    )
    model_revision: Annotated[str, Text, AfterValidator(non_empty)] = key(
        "main",
        "Branch, tag or commit of model_repo; locked to a commit before download.",
        "non-empty branch, tag or 40-hex commit",
    )
    model_dir: AbsolutePath = key(
        "/srv/autoglm/models/AutoGLM-Phone-9B",
        "Directory on the host that holds the verified model files.",
        "absolute path",
    )
    hub_endpoint: HttpUrl = key(
        "https://huggingface.co",
        "Hugging Face or an HF-compatible mirror (e.g. hf-mirror) used to resolve and pull.",
        "http(s) URL",
    )
