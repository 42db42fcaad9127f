"""The doctor's SELinux and AppArmor checks, from /sys and /proc contents. Pure.

The probe reads /sys/fs/selinux/enforce, /sys/module/apparmor/parameters/enabled, the
label of the service's main process (/proc/PID/attr/current, and attr/apparmor/current
where LSMs are stacked) and the SELinux context of the model and cache directories.
"""

from __future__ import annotations

from collections.abc import Mapping

from autoglm_infra.common.checks import Check
from autoglm_infra.doctor.probe import PathAccess
from autoglm_infra.stages.docker.files import UNIT_NAME as DOCKER_UNIT

# Types a file keeps when it was moved (not copied) out of a home or temp directory:
# confined services and containers are denied them.
MOVED_IN_TYPES = frozenset(
    {"user_home_t", "user_home_dir_t", "admin_home_t", "tmp_t", "user_tmp_t"}
)
# Types container_t may read (docker's --mount without :z keeps the host's label).
CONTAINER_TYPES = frozenset({"container_file_t", "container_ro_file_t", "svirt_sandbox_file_t"})
AVC_HINT = "ausearch -m AVC -ts recent shows the denials"


def selinux_type(context: str) -> str:
    """`system_u:object_r:var_t:s0` -> `var_t`."""
    parts = context.split(":")
    return parts[2] if len(parts) >= 3 else ""


def selinux_check(lsm: Mapping[str, str], paths: Mapping[str, PathAccess], docker: bool) -> Check:
    name = "selinux"
    mode = lsm.get("selinux")
    if mode is None:
        return Check(name, "ok", "SELinux not enabled (no /sys/fs/selinux)")
    if mode.strip() != "1":
        return Check(name, "ok", "SELinux permissive: denials are only logged")
    labelled = {p: a for p, a in paths.items() if a.exists and a.context}
    moved = [p for p, a in labelled.items() if selinux_type(a.context) in MOVED_IN_TYPES]
    unlabelled_model = [
        p
        for p, a in labelled.items()
        if docker and a.role == "model" and selinux_type(a.context) not in CONTAINER_TYPES
    ]
    shown = ", ".join(f"{p} {selinux_type(a.context)}" for p, a in labelled.items())
    if unlabelled_model:
        model = unlabelled_model[0]
        return Check(
            name,
            "fail",
            f"enforcing; the model directory {model} is labelled "
            f"{selinux_type(labelled[model].context)}: containers (container_t) cannot read it",
            f"semanage fcontext -a -t container_ro_file_t '{model}(/.*)?' && "
            f"restorecon -RFv {model}; {AVC_HINT}",
        )
    if moved:
        return Check(
            name,
            "fail",
            "enforcing; labelled like a home or temp directory (moved there with mv?): "
            + ", ".join(f"{p} {selinux_type(labelled[p].context)}" for p in moved),
            f"restorecon -RFv {' '.join(moved)} (relabels by policy); {AVC_HINT}",
        )
    domain = selinux_type(lsm.get("confinement", ""))
    if domain and "unconfined" not in domain and not docker:
        return Check(
            name,
            "warn",
            f"enforcing; the service runs confined as {domain}; contexts: {shown or '?'}",
            f"{AVC_HINT}; label the directories for {domain} (semanage fcontext -a -t TYPE "
            f"'DIR(/.*)?' && restorecon -RFv DIR) or review audit2allow's module",
        )
    return Check(
        name, "ok", f"enforcing; service domain {domain or 'unknown'}; contexts: {shown or '?'}"
    )


def _apparmor_profile(label: str) -> tuple[str, str]:
    """`autoglm (enforce)` -> (autoglm, enforce); `unconfined` -> (unconfined, "")."""
    profile, _, mode = label.strip().rpartition(" (")
    if not profile:
        return label.strip(), ""
    return profile, mode.rstrip(")")


def apparmor_check(
    lsm: Mapping[str, str], model_dir: str, cache_dir: str, docker: bool = False
) -> Check:
    name = "apparmor"
    if lsm.get("apparmor", "").strip().upper() != "Y":
        return Check(name, "ok", "AppArmor not enabled")
    label = lsm.get("apparmor_label") or lsm.get("confinement")
    if label is None:
        what = "the container is" if docker else "the service is"
        return Check(name, "skip", f"AppArmor enabled; {what} not running")
    if lsm.get("selinux") is not None and "apparmor_label" not in lsm:
        return Check(name, "ok", "AppArmor enabled; the process label is SELinux's")
    profile, mode = _apparmor_profile(label)
    if docker:
        return _container_apparmor(name, profile, mode)
    if profile in ("", "unconfined"):
        return Check(name, "ok", "AppArmor enabled; the service runs unconfined")
    if mode != "enforce":
        return Check(name, "ok", f"AppArmor profile {profile} in {mode or 'unknown'} mode")
    return Check(
        name,
        "warn",
        f"the service is confined by AppArmor profile {profile} (enforce): reads and "
        "writes outside it are denied",
        f"journalctl -k | grep 'apparmor=\"DENIED\"' shows denials; test with "
        f"aa-complain {profile}; then allow `{model_dir}/** r, {cache_dir}/** rwkm,` in "
        f"/etc/apparmor.d/local/{profile} and apparmor_parser -r the profile",
    )


def _container_apparmor(name: str, profile: str, mode: str) -> Check:
    """Docker mode: the container should run under a profile (CIS Docker 5.2)."""
    if profile in ("", "unconfined"):
        return Check(
            name,
            "warn",
            "AppArmor enabled, but the container runs unconfined: dockerd confines with "
            "docker-default only when apparmor_parser exists (Docker 23+ skips it silently)",
            f"apt-get install apparmor && systemctl restart docker && systemctl restart "
            f"{DOCKER_UNIT} (or converge the docker stage, which does all three)",
        )
    return Check(name, "ok", f"the container runs under AppArmor profile {profile} ({mode})")
