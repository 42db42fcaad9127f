"""Stage 5 - model: the pinned weights in model_dir, verified, at the cost of one command.

Runs alone with `pyinfra INVENTORY deploys/model.py`. The lock (commit + size and digest
of every file) comes from data/models/ or, when absent, from the hub API on the
controller. One remote command lists model_dir (size, mtime, inode: nothing is read) and
the stamps of verified files; only when something is missing, changed or unverified
(or `model_verify: full`) does the shipped stdlib helper run on the host.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, logger

from autoglm_infra.host_tools import model_fetch
from autoglm_infra.pyinfra_ext.operations import put_file, remove_file
from autoglm_infra.pyinfra_ext.stage import StageRefused, StageRun, stage
from autoglm_infra.pyinfra_ext.state_reads import read_state
from autoglm_infra.stages.model.hub_client import (
    HubError,
    hub_token,
    obtain_lock,
    token_for_endpoint,
)
from autoglm_infra.stages.model.ops import ModelSnapshotFact, model_pull
from autoglm_infra.stages.model.state import (
    HELPER_PATH,
    TOKEN_PATH,
    disk_problem,
    host_plan,
    plan_model,
    plan_path,
)

HELPER_SOURCE = Path(model_fetch.__file__).read_bytes()


@stage("model", 5)
def model(run: StageRun) -> None:
    settings = run.settings
    profile = run.profile
    model_dir = settings.model_dir
    try:
        token, withheld = token_for_endpoint(
            settings.model_source,
            settings.hub_endpoint,
            hub_token(settings.hub_token_env, settings.hub_token_file),
            settings.hub_token_to_mirror,
        )
        if withheld:
            logger.warning(f"{host.print_prefix}model: {withheld}")
        lock, origin = obtain_lock(
            Path(settings.model_lock_dir),  # relative to where pyinfra runs (the project)
            settings.model_source,
            settings.hub_endpoint,
            settings.model_repo,
            settings.model_revision,
            token,
            update=settings.model_lock_update,
        )
    except HubError as exc:  # user-facing, no traceback, nothing changed
        raise StageRefused(str(exc)) from None
    logger.info(
        f"{host.print_prefix}model: {lock.repo}@{lock.revision} = {lock.commit[:12]}, "
        f"{len(lock.files)} files, {lock.total_size / 1024**3:.2f} GiB, from {origin}"
    )

    margin = settings.model_disk_margin_mib * 2**20
    plan_file = plan_path(model_dir)
    snapshot = read_state(
        ModelSnapshotFact, model_dir=model_dir, files=[HELPER_PATH, plan_file, TOKEN_PATH]
    )
    plan = plan_model(lock, snapshot.model, settings.model_verify, settings.model_prune)
    problem = disk_problem(plan.download_bytes, margin, profile.disk_free_kib * 1024, model_dir)
    if problem:
        raise StageRefused(f"{problem}; nothing was changed")
    if plan.run_helper and not snapshot.control.commands.get("python3"):
        raise StageRefused(
            "python3 is not installed (the download helper "
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
    run.record(
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
                "modelscope" if settings.model_source == "modelscope" else "bearer",
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

    run.record(
        "pull",
        model_pull(
            name=f"Model: {lock.repo}@{lock.commit[:12]} in {model_dir}",
            model_dir=model_dir,
            plan=plan,
            verify=settings.model_verify,
            prune=settings.model_prune,
        ),
    )
