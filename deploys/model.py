"""Stage 5 - model: the pinned weights in model_dir, verified, at the cost of one command.

Runs alone with `pyinfra INVENTORY deploys/model.py`. The lock (commit + size and digest
of every file) comes from data/models/ or, when absent, from the hub API on the
controller. One remote command lists model_dir (size, mtime, inode: nothing is read) and
the stamps of verified files; only when something is missing, changed or unverified
(or `model_verify: full`) does the shipped stdlib helper run on the host.
"""

from pathlib import Path

from pyinfra import host, logger
from pyinfra.api.exceptions import PyinfraError

from autoglm_infra.hub_client import HubError, hub_token, obtain_lock
from autoglm_infra.model_state import (
    HELPER_PATH,
    TOKEN_PATH,
    disk_problem,
    host_plan,
    plan_model,
    plan_path,
)
from autoglm_infra.pyinfra_ext.converge_lock import take_converge_lock
from autoglm_infra.pyinfra_ext.model_ops import ModelSnapshotFact, model_pull
from autoglm_infra.pyinfra_ext.operations import put_file, remove_file
from autoglm_infra.pyinfra_ext.settings import host_profile, host_settings
from autoglm_infra.pyinfra_ext.stage_changes import MODEL, record

ROOT = Path(__file__).resolve().parents[1]
HELPER_SOURCE = (ROOT / "autoglm_infra" / "host_tools" / "model_fetch.py").read_bytes()

settings = host_settings()
take_converge_lock("model", settings.converge_lock_wait)  # before any fact is read
profile = host_profile(settings.model_dir)
model_dir = settings.model_dir
try:
    token = hub_token(settings.hub_token_env, settings.hub_token_file)
    lock, origin = obtain_lock(
        ROOT / settings.model_lock_dir,  # an absolute model_lock_dir stays absolute
        settings.model_source,
        settings.hub_endpoint,
        settings.model_repo,
        settings.model_revision,
        token,
        update=settings.model_lock_update,
    )
except HubError as exc:  # user-facing, no traceback, nothing changed
    raise PyinfraError(f"Model stage refused {host.name}: {exc}") from None
logger.info(
    f"{host.print_prefix}model: {lock.repo}@{lock.revision} = {lock.commit[:12]}, "
    f"{len(lock.files)} files, {lock.total_size / 1024**3:.2f} GiB, from {origin}"
)

margin = settings.model_disk_margin_mib * 2**20
plan_file = plan_path(model_dir)
snapshot = host.get_fact(
    ModelSnapshotFact, model_dir=model_dir, files=[HELPER_PATH, plan_file, TOKEN_PATH]
)
plan = plan_model(lock, snapshot.model, settings.model_verify, settings.model_prune)
problem = disk_problem(plan.download_bytes, margin, profile.disk_free_kib * 1024, model_dir)
if problem:
    raise PyinfraError(f"Model stage refused {host.name}: {problem}; nothing was changed")
if plan.run_helper and not snapshot.control.commands.get("python3"):
    raise PyinfraError(
        f"Model stage refused {host.name}: python3 is not installed (the download helper "
        "needs only its standard library): apt-get install python3-minimal"
    )
if plan.extras:
    shown = ", ".join(plan.extras[:5]) + (" ..." if len(plan.extras) > 5 else "")
    action = "removing them" if settings.model_prune else "model_prune: true removes them"
    logger.warning(
        f"{host.print_prefix}model: {len(plan.extras)} files in {model_dir} are not in the "
        f"lock ({shown}); {action}"
    )

put_file(
    name="Model: download helper",
    path=HELPER_PATH,
    content=HELPER_SOURCE,
    current=snapshot.control.files.get(HELPER_PATH),
)
record(
    MODEL,
    "download plan",
    put_file(
        name="Model: download plan (pinned commit, sizes, digests)",
        path=plan_file,
        content=host_plan(
            lock,
            settings.hub_endpoint,
            model_dir,
            settings.model_download_workers,
            settings.model_download_attempts,
            settings.model_retry_max_delay,
            margin,
            TOKEN_PATH if token else None,
        ),
        current=snapshot.control.files.get(plan_file),
    ),
)
if token is not None:
    put_file(
        name="Model: hub token (0600)",
        path=TOKEN_PATH,
        content=(token.reveal() + "\n").encode(),
        current=snapshot.control.files.get(TOKEN_PATH),
        mode="600",
    )
else:
    remove_file(name="Model: no hub token", path=TOKEN_PATH,
                current=snapshot.control.files.get(TOKEN_PATH))  # fmt: skip

record(
    MODEL,
    "pull",
    model_pull(
        name=f"Model: {lock.repo}@{lock.commit[:12]} in {model_dir}",
        model_dir=model_dir,
        plan=plan,
        verify=settings.model_verify,
        prune=settings.model_prune,
    ),
)
