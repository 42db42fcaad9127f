"""Keys of the model stage: which weights, from where, to which directory, how verified."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from autoglm_infra.config.fields import AbsolutePath, HttpUrl, Keys, Text, key, non_empty

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"


def repo_id(value: str) -> str:
    if not _REPO_ID.match(value):
        raise ValueError("must look like 'owner/name', e.g. 'zai-org/AutoGLM-Phone-9B'")
    return value


def env_var_name(value: str) -> str:
    if not _ENV_VAR.match(value):
        raise ValueError("must be an environment variable name such as HF_TOKEN")
    return value


def controller_path(value: str) -> str:
    if not value.strip() or "\x00" in value:
        raise ValueError("must be a non-empty path on the controller")
    return value


class ModelKeys(Keys):
    model_repo: Annotated[str, AfterValidator(repo_id)] = key(
        "zai-org/AutoGLM-Phone-9B",
        "Hub repository of the model (or its -Multilingual twin).",
        "owner/name",
    )
    model_revision: Annotated[str, Text, AfterValidator(non_empty)] = key(
        "main",
        "Branch, tag or commit of model_repo; locked to a commit before download. ModelScope's "
        "default branch is master, and it takes only branch and tag names.",
        "non-empty branch, tag or 40-hex commit",
    )
    model_dir: AbsolutePath = key(
        "/srv/autoglm/models/AutoGLM-Phone-9B",
        "Directory on the host that holds the verified model files.",
        "absolute path",
    )
    hub_endpoint: HttpUrl = key(
        HF_DEFAULT_ENDPOINT,
        "Hugging Face or an HF-compatible mirror (e.g. hf-mirror) used to resolve and pull.",
        "http(s) URL",
    )
    model_source: Literal["huggingface", "modelscope"] = key(
        "huggingface",
        "API spoken by hub_endpoint: Hugging Face (and its mirrors) or ModelScope.",
        "huggingface | modelscope",
    )
    model_lock_dir: Annotated[str, AfterValidator(controller_path)] = key(
        "data/models",
        "Controller directory of model locks (relative to the project); a stored lock "
        "needs no hub API.",
        "path on the controller",
    )
    model_lock_update: bool = key(
        False,
        "Re-resolve model_revision on the hub and rewrite its lock (e.g. a moved branch).",
        "true | false",
    )
    model_download_workers: Annotated[int, Field(ge=1, le=32)] = key(
        4, "Files downloaded (and hashed) in parallel on the host.", "integer 1-32"
    )
    model_download_attempts: Annotated[int, Field(ge=1, le=100)] = key(
        8,
        "Tries per file on 429, 5xx and dropped connections before the stage fails.",
        "integer 1-100",
    )
    model_retry_max_delay: Annotated[int, Field(ge=1, le=3600)] = key(
        60,
        "Longest wait between tries, in seconds (backoff starts at 1 s and doubles).",
        "integer 1-3600",
    )
    model_verify: Literal["stamp", "full"] = key(
        "stamp",
        "stamp: trust per-file size/mtime/inode stamps (no reading); full: re-hash every file.",
        "stamp | full",
    )
    doctor_model_verify: Literal["stamp", "full"] = key(
        "stamp",
        "Doctor's model check. stamp: trust the stamps the pull left (reads no weights); "
        "full: re-hash every file in parallel and name each whose bytes changed.",
        "stamp | full",
    )
    model_prune: bool = key(
        False,
        "Remove files in model_dir that are not in the lock (they are always reported).",
        "true | false",
    )
    model_disk_margin_mib: Annotated[int, Field(ge=0)] = key(
        1024,
        "Free space to keep beyond the missing bytes; the pull refuses to start otherwise.",
        "integer >= 0 (MiB)",
    )
    hub_token_env: Annotated[str, AfterValidator(env_var_name)] = key(
        "HF_TOKEN",
        "Controller environment variable holding the hub token (for gated or private repos).",
        "environment variable name",
    )
    hub_token_to_mirror: bool = key(
        False,
        "Also send the hub token to a hub_endpoint that is not the source's own "
        "(huggingface.co / modelscope.cn), e.g. a private mirror that checks it; off, a "
        "third-party mirror never sees the token.",
        "true | false",
    )
    hub_token_file: Annotated[str, AfterValidator(controller_path)] | None = key(
        None,
        "Controller file (mode 600) holding the hub token when hub_token_env is unset.",
        "path on the controller, or None",
    )

    @model_validator(mode="after")
    def _source_matches_endpoint(self) -> Self:
        if self.model_source == "modelscope" and self.hub_endpoint == HF_DEFAULT_ENDPOINT:
            raise ValueError(
                f"hub_endpoint: model_source is modelscope but hub_endpoint is "
                f"{HF_DEFAULT_ENDPOINT}; set hub_endpoint: {MODELSCOPE_ENDPOINT} (and "
                f"model_repo: ZhipuAI/AutoGLM-Phone-9B)"
            )
        return self
