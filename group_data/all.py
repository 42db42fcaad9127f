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

# Serving engine: vLLM or SGLang on GPU hosts; cpu (`transformers serve`) for GPU-less test hosts.
# Allowed: vllm | sglang | cpu.
serve_engine = "vllm"

# Engine release (stack/nvidia_stack.yaml): 'auto' takes the newest default candidate that fits
# the host (vLLM 0.33.0 on CUDA 13 / Turing+, else 0.19.1; SGLang 0.5.23); 0.12.0 is Open-
# AutoGLM's README stack. Allowed: auto | a release of serve_engine in stack/nvidia_stack.yaml
# (vllm: 0.33.0, 0.19.1, 0.12.0, 0.34.0; sglang: 0.5.23).
serve_engine_version = "auto"

# Model name clients send; None derives it from model_repo (autoglm-phone-9b). Allowed: name of
# letters, digits, . _ - or None.
serve_model_name = None

# Weight and activation dtype of the engine. Allowed: auto | bfloat16 | float16 | float32.
serve_dtype = "auto"

# The only host directory API requests may read local images from (never /). Allowed: absolute
# path other than /.
serve_media_dir = "/srv/autoglm/media"

# Compute threads of the cpu engine (OMP_NUM_THREADS); None keeps torch's default, one per core.
# Test hosts that share one machine's cores answer far sooner with 1: several engines each
# spinning one thread per core slow each other down many times. Allowed: integer 1-1024 or None
# (read by the cpu engine in venv mode only).
serve_cpu_threads = None

# Extra engine arguments, one token per item, appended after the generated ones. Allowed: list of
# strings.
serve_extra_args = []

# GPUs one model replica is split over (--tensor-parallel-size). Allowed: integer 1-64.
vllm_tensor_parallel_size = 1

# Fraction of GPU memory vLLM may use (--gpu-memory-utilization). Allowed: number in (0, 1].
vllm_gpu_memory_utilization = 0.9

# Context length (--max-model-len); Open-AutoGLM recommends 25480. Allowed: integer >= 256.
vllm_max_model_len = 25480

# Concurrent sequences (--max-num-seqs); None keeps vLLM's default. Allowed: integer >= 1 or None.
vllm_max_num_seqs = None

# Chunked prefill on/off (--[no-]enable-chunked-prefill); None keeps vLLM's default. Allowed: true
# | false | None.
vllm_enable_chunked_prefill = None

# Images allowed per prompt (--limit-mm-per-prompt). Allowed: integer 1-100.
vllm_max_images_per_prompt = 10

# ADDRESS:PORT where an nginx TLS front serves the endpoint to other machines (per-client keys,
# route allowlist, rate limits); None: loopback only. Allowed: ADDRESS:PORT (not loopback) or
# None.
serve_expose = None

# Clients given a key by the front; removing one revokes its key at the next converge. Allowed:
# list of unique names (a-z, 0-9, _ -).
serve_expose_clients = []

# Controller directory (one per deployment) holding the front's CA, server certificates and the
# client key files to hand out; the CA key never leaves it. Allowed: path on the controller.
serve_expose_secrets_dir = "~/.config/autoglm-infra/expose"

# Controller file with your own certificate chain (PEM) for the front; None issues one from the
# deployment's CA. Allowed: path on the controller or None.
serve_expose_cert_file = None

# Controller file (mode 600) with the private key of serve_expose_cert_file. Allowed: path on the
# controller or None.
serve_expose_key_file = None

# Requests per minute each client may make (429 with Retry-After beyond). Allowed: integer
# 1-60000.
serve_expose_rate_per_minute = 60

# Requests a client may make at once above its rate before 429. Allowed: integer 0-10000.
serve_expose_burst = 10

# Largest request body in MiB (Open-AutoGLM sends up to 10 base64 screenshots). Allowed: integer
# 1-1024.
serve_expose_max_body_mb = 64

# Seconds the front waits for the engine's answer to one request. Allowed: integer 10-3600.
serve_expose_timeout_sec = 600

# Serve an unauthenticated /health (status only) through the front. Allowed: true | false.
serve_expose_health = False

# ADDRESS:PORT of a separate TLS listener (the front's certificate) for Prometheus:
# /metrics/engine and /metrics/node (Debian's node exporter), with a bearer token. Allowed:
# ADDRESS:PORT (not loopback) or None.
serve_metrics = None

# Source networks allowed to scrape serve_metrics (all others get 403). Allowed: list of IP
# addresses / CIDRs.
serve_metrics_allow = []

# Refuse hosts with fewer CPU cores (Open-AutoGLM's minimum is 4). Allowed: integer >= 1.
preflight_min_cpus = 4

# Refuse hosts with less RAM in GiB (Open-AutoGLM's minimum is 16). Allowed: number >= 0.
preflight_min_mem_gib = 16

# Refuse hosts with less free disk (GiB) at model_dir: ~20 GB weights plus caches. Allowed: number
# >= 0.
preflight_min_disk_gib = 40

# Seconds a converge waits for another one holding the same host (the host-side lock in /run/lock)
# before it stops that host naming the holder; 0: do not wait. Allowed: integer 0-86400.
converge_lock_wait = 600

# HTTP(S) proxy for apt, pip, npm, Docker and the shell; credentials never go here. Allowed:
# http(s) URL without user:pass, or None.
proxy_url = None

# Hosts, domains and CIDRs that bypass proxy_url. Allowed: list of host names / domains / CIDRs.
no_proxy = ["localhost", "127.0.0.1", "::1"]

# User for proxy_url's basic auth; the password comes from env AUTOGLM_PROXY_PASSWORD or
# proxy_password_file, never from group_data. Allowed: user name or None.
proxy_username = None

# File on the controller (chmod 600) holding the proxy password; env AUTOGLM_PROXY_PASSWORD wins
# over it. Allowed: absolute path or ~/... on the controller, or None.
proxy_password_file = None

# PEM CA certificates on the controller to add to every host's trust store (e.g. a TLS-inspecting
# proxy's CA). Allowed: list of absolute paths (or ~/...) on the controller.
ca_cert_files = []

# Mirror of the distro archive (e.g. https://mirrors.tuna.tsinghua.edu.cn/debian); replaces the
# distro's apt sources. None keeps them. Allowed: http(s) URL or None.
apt_mirror_url = None

# Mirror of the security archive; None derives it: Debian <apt_mirror_url>-security, Ubuntu
# apt_mirror_url itself. Allowed: http(s) URL or None.
apt_security_mirror_url = None

# PyPI mirror used for the venv; None uses pip's default index. Allowed: http(s) URL or None.
pip_index_url = None

# Further package indexes pip searches after pip_index_url. Allowed: list of http(s) URLs.
pip_extra_index_urls = []

# Hosts pip may reach over plain http or with an unverified certificate. Allowed: list of host or
# host:port.
pip_trusted_hosts = []

# npm registry mirror; None uses npm's default registry. Allowed: http(s) URL or None.
npm_registry = None

# File on the controller (chmod 600) holding the npm registry token; env AUTOGLM_NPM_TOKEN wins
# over it. Allowed: absolute path or ~/... on the controller, or None.
npm_token_file = None

# Docker Hub pull-through mirrors for the Docker daemon (registry-mirrors). Allowed: list of
# http(s) URLs.
docker_registry_mirrors = []

# NVIDIA driver branch; 'auto' picks the newest production branch that fits. Allowed: auto |
# three-digit branch (e.g. 570).
nvidia_driver_branch = "auto"

# adopt keeps a healthy loaded driver of a usable branch, whoever installed it, and resolves
# CUDA/cuDNN/torch against it; manage installs the planned driver through apt and stops before any
# change where a driver no package manager owns is loaded. Allowed: adopt | manage.
nvidia_driver_policy = "adopt"

# Exact driver release within the branch; 'auto' takes the release the table pins. Allowed: auto |
# release (e.g. 580.126.09).
nvidia_driver_version = "auto"

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

# Reboot when the running kernel needs it for the driver (the loaded driver differs from the
# installed one, or nouveau is loaded); never only warns. Allowed: never | if-needed.
nvidia_reboot = "if-needed"

# Base URL of NVIDIA's CUDA apt repositories, or a mirror with the same layout. Allowed: http(s)
# URL.
nvidia_repo_base_url = "https://developer.download.nvidia.com/compute/cuda/repos"

# Fingerprint the repository signing key must have before it is trusted. Allowed: 40 hex digits.
nvidia_repo_key_fingerprint = "EB693B3035CD5710E231E123A4B469963BF863CC"

# Lock profile to install; 'auto' is <engine>-<torch flavour> from the stack resolver on GPU hosts
# and 'cpu' on GPU-less hosts. Allowed: auto | cpu | <engine>-<flavour> with a lock in the python
# env stage's locks/ (e.g. vllm-cu128).
python_profile = "auto"

# Interpreter the venv is created with (must satisfy the lock's Python range). Allowed: absolute
# path.
python_interpreter = "/usr/bin/python3"

# Path of the serving venv (a symlink swapped atomically to <path>.builds/<digest>). Allowed:
# absolute path.
python_venv_dir = "/opt/autoglm/venv"

# System user (no login shell) the model server runs as; it can read, not modify, the venv.
# Allowed: POSIX user name, not root.
python_service_user = "autoglm"

# Home of the service user; HF_HOME, TORCH_HOME, VLLM_CACHE_ROOT, TRITON_CACHE_DIR and
# XDG_CACHE_HOME live below it. Allowed: absolute path.
python_cache_dir = "/var/cache/autoglm"

# Base of PyTorch's wheel index or a mirror with its layout (<base>/cpu, <base>/cu129); added for
# locks whose torch has a local label. None: torch comes from pip_index_url. Allowed: http(s) URL
# or None.
python_torch_index_url = "https://download.pytorch.org/whl"

# Extra options for the pip install (e.g. ['--timeout=60']); index, hash and binary-only options
# are set by the stage. Allowed: list of pip options without spaces.
python_pip_extra_args = []

# Controller directory holding <profile>.txt locks; None uses the locks shipped with the package
# (autoglm_infra/locks). Allowed: absolute path or None.
python_locks_dir = None

# Hub repository of the model (or its -Multilingual twin). Allowed: owner/name.
model_repo = "zai-org/AutoGLM-Phone-9B"

# Branch, tag or commit of model_repo; locked to a commit before download. ModelScope's default
# branch is master, and it takes only branch and tag names. Allowed: non-empty branch, tag or
# 40-hex commit.
model_revision = "main"

# Directory on the host that holds the verified model files. Allowed: absolute path.
model_dir = "/srv/autoglm/models/AutoGLM-Phone-9B"

# Hugging Face or an HF-compatible mirror (e.g. hf-mirror) used to resolve and pull. Allowed:
# http(s) URL.
hub_endpoint = "https://huggingface.co"

# API spoken by hub_endpoint: Hugging Face (and its mirrors) or ModelScope. Allowed: huggingface |
# modelscope.
model_source = "huggingface"

# Controller directory of model locks (relative to the project); a stored lock needs no hub API.
# Allowed: path on the controller.
model_lock_dir = "data/models"

# Re-resolve model_revision on the hub and rewrite its lock (e.g. a moved branch). Allowed: true |
# false.
model_lock_update = False

# Files downloaded (and hashed) in parallel on the host. Allowed: integer 1-32.
model_download_workers = 4

# Tries per file on 429, 5xx and dropped connections before the stage fails. Allowed: integer
# 1-100.
model_download_attempts = 8

# Longest wait between tries, in seconds (backoff starts at 1 s and doubles). Allowed: integer
# 1-3600.
model_retry_max_delay = 60

# stamp: trust per-file size/mtime/inode stamps (no reading); full: re-hash every file. Allowed:
# stamp | full.
model_verify = "stamp"

# Doctor's model check. stamp: trust the stamps the pull left (reads no weights); full: re-hash
# every file in parallel and name each whose bytes changed. Allowed: stamp | full.
doctor_model_verify = "stamp"

# Remove files in model_dir that are not in the lock (they are always reported). Allowed: true |
# false.
model_prune = False

# Free space to keep beyond the missing bytes; the pull refuses to start otherwise. Allowed:
# integer >= 0 (MiB).
model_disk_margin_mib = 1024

# Controller environment variable holding the hub token (for gated or private repos). Allowed:
# environment variable name.
hub_token_env = "HF_TOKEN"

# Also send the hub token to a hub_endpoint that is not the source's own (huggingface.co /
# modelscope.cn), e.g. a private mirror that checks it; off, a third-party mirror never sees the
# token. Allowed: true | false.
hub_token_to_mirror = False

# Controller file (mode 600) holding the hub token when hub_token_env is unset. Allowed: path on
# the controller, or None.
hub_token_file = None

# Controller environment variable holding the API key (read first). Allowed: environment variable
# name.
service_api_key_env = "AUTOGLM_API_KEY"

# Controller file (mode 600) holding the API key; with neither set, the host makes one. Allowed:
# path on the controller or None.
service_api_key_file = None

# Seconds between a crash and the restart (GPU memory must be freed). Allowed: integer 1-600.
service_restart_sec = 20

# Starts allowed within service_start_limit_interval_sec before it stays failed. Allowed: integer
# 1-100.
service_start_limit_burst = 5

# Window of the start limit; must exceed burst x (restart_sec + start time). Allowed: integer >=
# 10.
service_start_limit_interval_sec = 1800

# Deadline for /health to answer after a start (model load and compile take minutes). Allowed:
# integer 30-7200.
service_start_timeout_sec = 1500

# Client addresses/CIDRs besides localhost allowed to reach the service (IPAddressAllow). Allowed:
# list of IP addresses / CIDRs.
service_allow_from = []

# Docker engine from Docker's apt repository (docker-ce) or the distribution (docker.io). Allowed:
# docker-repo | distro.
docker_engine_source = "docker-repo"

# Base URL of Docker's apt repositories (<base>/<debian|ubuntu>), or a mirror of it. Allowed:
# http(s) URL.
docker_repo_base_url = "https://download.docker.com/linux"

# Fingerprint Docker's repository key must have before it is trusted. Allowed: 40 hex digits.
docker_repo_key_fingerprint = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"

# Base URL of NVIDIA's container toolkit repo (<base>/stable/deb/<arch>), or a mirror. Allowed:
# http(s) URL.
docker_toolkit_repo_base_url = "https://nvidia.github.io/libnvidia-container"

# Fingerprint the container toolkit repository key must have before it is trusted. Allowed: 40 hex
# digits.
docker_toolkit_key_fingerprint = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"

# nvidia-container-toolkit version installed and held (with its three libraries). Allowed: Debian
# version, e.g. 1.17.8-1.
docker_toolkit_version = "1.17.8-1"

# Engine image pinned by digest; required in docker mode. An image ID needs a tarball. Allowed:
# name:tag@sha256:<64 hex> | sha256:<64 hex> (image ID) | None.
docker_image = None

# `docker save` tarball on the controller, loaded on air-gapped hosts instead of a pull. Allowed:
# absolute path on the controller, or None.
docker_image_tarball = None

# Hash lock installed into a derived image built on the host from docker_image (pip --require-
# hashes --no-deps); None runs docker_image as it is. Allowed: name of a lock in docker_locks_dir
# (e.g. docker-vllm-0.12.0), or None.
docker_derived_lock = None

# Controller directory holding <name>.txt locks for docker_derived_lock; None uses the project's
# autoglm_infra/locks. Allowed: absolute path or None.
docker_locks_dir = None

# UID:GID the engine runs as in the container (never 0). Allowed: UID:GID, UID not 0.
docker_user = "2000:0"

# Container memory limit (--memory). Allowed: size such as 64g.
docker_memory = "64g"

# Memory plus swap limit (--memory-swap); None means equal to docker_memory (no swap). Allowed:
# size >= docker_memory, or None.
docker_memory_swap = None

# CPUs the container may use (--cpus). Allowed: number > 0.
docker_cpus = 8.0

# Most processes/threads in the container (--pids-limit). Allowed: integer 64-4194304.
docker_pids_limit = 4096

# Size of /dev/shm (--shm-size); above the 4 GiB multimodal shm cache. Never --ipc=host. Allowed:
# size such as 16g.
docker_shm_size = "16g"

# Size of the tmpfs at /tmp. Allowed: size such as 4g.
docker_tmp_size = "4g"

# Mount /tmp exec: Triton/Inductor dlopen() the kernels they build there. Allowed: true | false.
docker_tmp_exec = True

# GPUs the container sees (--gpus device=...); [] for none, ['all'] for every GPU. Allowed: list
# of GPU indices / UUIDs, or ['all'], or [].
docker_gpu_devices = ["0"]

# Named volume for the engine's caches (HF, vLLM compile, Triton), writable by docker_user.
# Allowed: Docker volume name.
docker_cache_volume = "autoglm-cache"

# Arguments after the image; None serves the mounted model with Open-AutoGLM's vLLM flags.
# Allowed: list of strings, or None.
docker_command = None

# Health check run inside the container; None probes /health with python3. Allowed: shell command,
# or None.
docker_health_cmd = None

# Seconds of start-up (model load, compile) before failed health checks count. Allowed: integer
# 0-7200.
docker_health_start_period = 900

# Seconds between health checks (the first one runs after this too). Allowed: integer 1-3600.
docker_health_interval = 30

# How the API key reaches the engine: a 0600 --env-file (the key shows in `docker inspect`
# Config.Env), or a read-only file mount read at start (it does not). Allowed: env-file | secret-
# mount.
docker_api_key_delivery = "env-file"

# The image's entrypoint; secret-mount runs it after loading the key ([] for none). Allowed: list
# of strings.
docker_entrypoint = ["vllm", "serve"]

# Send one real chat completion after /health and /v1/models (false: endpoints only). Allowed:
# true | false.
verify_chat = True

# Require a non-trivial <think> block, as Open-AutoGLM's checker does for the real model. Allowed:
# true | false.
verify_expect_reasoning = True

# Attempts per request on 429/503 (1 s, doubling). Allowed: integer 1-10.
verify_tries = 3

__all__ = [
    "apt_mirror_url",
    "apt_security_mirror_url",
    "ca_cert_files",
    "converge_lock_wait",
    "cuda_version",
    "cudnn_version",
    "docker_api_key_delivery",
    "docker_cache_volume",
    "docker_command",
    "docker_cpus",
    "docker_derived_lock",
    "docker_engine_source",
    "docker_entrypoint",
    "docker_gpu_devices",
    "docker_health_cmd",
    "docker_health_interval",
    "docker_health_start_period",
    "docker_image",
    "docker_image_tarball",
    "docker_locks_dir",
    "docker_memory",
    "docker_memory_swap",
    "docker_pids_limit",
    "docker_registry_mirrors",
    "docker_repo_base_url",
    "docker_repo_key_fingerprint",
    "docker_shm_size",
    "docker_tmp_exec",
    "docker_tmp_size",
    "docker_toolkit_key_fingerprint",
    "docker_toolkit_repo_base_url",
    "docker_toolkit_version",
    "docker_user",
    "doctor_model_verify",
    "hub_endpoint",
    "hub_token_env",
    "hub_token_file",
    "hub_token_to_mirror",
    "model_dir",
    "model_disk_margin_mib",
    "model_download_attempts",
    "model_download_workers",
    "model_lock_dir",
    "model_lock_update",
    "model_prune",
    "model_repo",
    "model_retry_max_delay",
    "model_revision",
    "model_source",
    "model_verify",
    "no_proxy",
    "npm_registry",
    "npm_token_file",
    "nvidia_driver_branch",
    "nvidia_driver_flavour",
    "nvidia_driver_policy",
    "nvidia_driver_version",
    "nvidia_reboot",
    "nvidia_repo_base_url",
    "nvidia_repo_key_fingerprint",
    "nvidia_require_gpu",
    "pip_extra_index_urls",
    "pip_index_url",
    "pip_trusted_hosts",
    "preflight_min_cpus",
    "preflight_min_disk_gib",
    "preflight_min_mem_gib",
    "proxy_password_file",
    "proxy_url",
    "proxy_username",
    "python_cache_dir",
    "python_interpreter",
    "python_locks_dir",
    "python_pip_extra_args",
    "python_profile",
    "python_service_user",
    "python_torch_index_url",
    "python_venv_dir",
    "serve_cpu_threads",
    "serve_dtype",
    "serve_engine",
    "serve_engine_version",
    "serve_expose",
    "serve_expose_burst",
    "serve_expose_cert_file",
    "serve_expose_clients",
    "serve_expose_health",
    "serve_expose_key_file",
    "serve_expose_max_body_mb",
    "serve_expose_rate_per_minute",
    "serve_expose_secrets_dir",
    "serve_expose_timeout_sec",
    "serve_extra_args",
    "serve_host",
    "serve_media_dir",
    "serve_metrics",
    "serve_metrics_allow",
    "serve_mode",
    "serve_model_name",
    "serve_port",
    "service_allow_from",
    "service_api_key_env",
    "service_api_key_file",
    "service_restart_sec",
    "service_start_limit_burst",
    "service_start_limit_interval_sec",
    "service_start_timeout_sec",
    "verify_chat",
    "verify_expect_reasoning",
    "verify_tries",
    "vllm_enable_chunked_prefill",
    "vllm_gpu_memory_utilization",
    "vllm_max_images_per_prompt",
    "vllm_max_model_len",
    "vllm_max_num_seqs",
    "vllm_tensor_parallel_size",
]
