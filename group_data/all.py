"""Every configuration key with its default: the documented baseline for all hosts.

Generated from autoglm_infra/config/schema.py by `python -m autoglm_infra.config.docs
--write`; a test fails when it drifts. Override per group in group_data/<group>.py,
per host in the inventory, or per run with `--data key=value`."""

# Run the model server from a venv under systemd, or in Docker. Allowed: venv | docker.
serve_mode = "venv"

# Address the OpenAI-compatible endpoint binds to; loopback unless a proxy fronts it. Allowed: an
# IPv4/IPv6 address.
serve_host = "127.0.0.1"

# TCP port of the OpenAI-compatible endpoint. Allowed: integer 1-65535.
serve_port = 8000

# HTTP(S) proxy for apt, pip, npm, Docker and the shell; credentials never go here. Allowed:
# http(s) URL without user:pass, or None.
proxy_url = None

# Hosts, domains and CIDRs that bypass proxy_url. Allowed: list of host names / domains / CIDRs.
no_proxy = ["localhost", "127.0.0.1", "::1"]

# PyPI mirror used for the venv; None uses pip's default index. Allowed: http(s) URL or None.
pip_index_url = None

# npm registry mirror; None uses npm's default registry. Allowed: http(s) URL or None.
npm_registry = None

# NVIDIA driver branch; 'auto' picks the newest production branch that fits. Allowed: auto |
# three-digit branch (e.g. 570).
nvidia_driver_branch = "auto"

# Kernel modules: open (Turing and newer) or proprietary; auto picks open when possible. Allowed:
# auto | open | proprietary.
nvidia_driver_flavour = "auto"

# CUDA toolkit version; 'auto' follows the serving engine's torch wheel. Allowed: auto |
# MAJOR.MINOR (e.g. 12.8).
cuda_version = "auto"

# cuDNN 9 release to install from NVIDIA's repo; 'none' skips it. Allowed: auto | none | 9 |
# 9.MINOR.
cudnn_version = "auto"

# Refuse hosts without an NVIDIA GPU; false installs the stack and skips GPU checks. Allowed: true
# | false.
nvidia_require_gpu = True

# Reboot when the installed driver differs from the loaded one; never only warns. Allowed: never |
# if-needed.
nvidia_reboot = "if-needed"

# Base URL of NVIDIA's CUDA apt repositories, or a mirror with the same layout. Allowed: http(s)
# URL.
nvidia_repo_base_url = "https://developer.download.nvidia.com/compute/cuda/repos"

# Fingerprint the repository signing key must have before it is trusted. Allowed: 40 hex digits.
nvidia_repo_key_fingerprint = "EB693B3035CD5710E231E123A4B469963BF863CC"

# Hub repository of the model (or its -Multilingual twin). Allowed: owner/name.
model_repo = "zai-org/AutoGLM-Phone-9B"

# Branch, tag or commit of model_repo; locked to a commit before download. Allowed: non-empty
# branch, tag or 40-hex commit.
model_revision = "main"

# Directory on the host that holds the verified model files. Allowed: absolute path.
model_dir = "/srv/autoglm/models/AutoGLM-Phone-9B"

# Hugging Face or an HF-compatible mirror (e.g. hf-mirror) used to resolve and pull. Allowed:
# http(s) URL.
hub_endpoint = "https://huggingface.co"
