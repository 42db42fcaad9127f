"""Keys of the NVIDIA stage: driver branch, CUDA, cuDNN, repository and its trust."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator

from autoglm_infra.config.fields import HttpUrl, Keys, Text, fingerprint, key


def check_driver_branch(value: str) -> str:
    if value != "auto" and not re.fullmatch(r"[1-9][0-9]{2}", value):
        raise ValueError("must be 'auto' or a three-digit branch such as '570' or '580'")
    return value


def check_driver_version(value: str) -> str:
    if value != "auto" and not re.fullmatch(r"[1-9][0-9]{2}\.[0-9]{1,3}(\.[0-9]{1,3})?", value):
        raise ValueError("must be 'auto' or a driver release such as '580.126.09'")
    return value


def check_cuda_version(value: str) -> str:
    if value != "auto" and not re.fullmatch(r"1[1-9]\.[0-9]", value):
        raise ValueError("must be 'auto' or MAJOR.MINOR such as '12.8'")
    return value


def check_cudnn_version(value: str) -> str:
    if value not in ("auto", "none") and not re.fullmatch(r"9(\.[0-9]{1,2})?", value):
        raise ValueError("must be 'auto', 'none', '9' or '9.MINOR' such as '9.10'")
    return value


class NvidiaKeys(Keys):
    nvidia_driver_branch: Annotated[str, Text, AfterValidator(check_driver_branch)] = key(
        "auto",
        "NVIDIA driver branch; 'auto' picks the newest production branch that fits.",
        "auto | three-digit branch (e.g. 570)",
    )
    nvidia_driver_policy: Literal["adopt", "manage"] = key(
        "adopt",
        "adopt keeps a healthy loaded driver of a usable branch, whoever installed it, and "
        "resolves CUDA/cuDNN/torch against it; manage installs the planned driver through apt "
        "and stops before any change where a driver no package manager owns is loaded.",
        "adopt | manage",
    )
    nvidia_driver_version: Annotated[str, Text, AfterValidator(check_driver_version)] = key(
        "auto",
        "Exact driver release within the branch; 'auto' takes the release the table pins.",
        "auto | release (e.g. 580.126.09)",
    )
    nvidia_driver_flavour: Literal["auto", "open", "proprietary"] = key(
        "auto",
        "Kernel modules: open (Turing and newer) or proprietary; auto picks open when possible.",
        "auto | open | proprietary",
    )
    cuda_version: Annotated[str, Text, AfterValidator(check_cuda_version)] = key(
        "auto",
        "CUDA toolkit version; 'auto' follows the serving engine's torch wheel.",
        "auto | MAJOR.MINOR (e.g. 12.8)",
    )
    cudnn_version: Annotated[str, Text, AfterValidator(check_cudnn_version)] = key(
        "auto",
        "cuDNN 9 release to install from NVIDIA's repo; 'none' skips it.",
        "auto | none | 9 | 9.MINOR",
    )
    nvidia_require_gpu: bool = key(
        True,
        "Refuse hosts without an NVIDIA GPU; false installs the stack and skips GPU checks.",
        "true | false",
    )
    nvidia_reboot: Literal["never", "if-needed"] = key(
        "if-needed",
        "Reboot when the running kernel needs it for the driver (the loaded driver differs"
        " from the installed one, or nouveau is loaded); never only warns.",
        "never | if-needed",
    )
    nvidia_repo_base_url: HttpUrl = key(
        "https://developer.download.nvidia.com/compute/cuda/repos",
        "Base URL of NVIDIA's CUDA apt repositories, or a mirror with the same layout.",
        "http(s) URL",
    )
    nvidia_repo_key_fingerprint: Annotated[str, AfterValidator(fingerprint)] = key(
        "EB693B3035CD5710E231E123A4B469963BF863CC",
        "Fingerprint the repository signing key must have before it is trusted.",
        "40 hex digits",
    )
