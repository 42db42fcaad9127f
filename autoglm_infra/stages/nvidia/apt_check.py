"""Ask the host's apt, before any package changes, whether the plan lands exactly. Pure.

NVIDIA's metas depend on ">=" floors (cuda-drivers-580: nvidia-driver (>= 580.65.06)), so
what apt installs is decided by the repository, not by the plan. The stage therefore runs
`check_script` (apt-get update, apt-cache policy, apt-get -s install with the closure pin
that is about to be written) and `judge` reads its output: every planned package must
exist at its planned version, and after the simulated transaction every NVIDIA driver
package must be at the planned driver release (and cuDNN at the planned cuDNN), or the
stage stops with the planned and available versions and the fix.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autoglm_infra.common.apt_lock import apt_update_command
from autoglm_infra.stack.facts_table import parse_version
from autoglm_infra.stages.nvidia.files import DRIVER_PACKAGES_REGEX

POLICY_MARK = "@@autoglm-policy"
SIMULATE_MARK = "@@autoglm-simulate"
UPDATE_FAILED = "@@autoglm-update-failed"
# The container toolkit (nvidia-container-*, libnvidia-container*) matches the name but is
# versioned 1.x, which DRIVER_VERSION never matches.
DRIVER_NAME = re.compile(DRIVER_PACKAGES_REGEX.strip("/"))
DRIVER_VERSION = re.compile(r"^(?:[0-9]+:)?([3-9][0-9]{2}\.[0-9]+(?:\.[0-9]+)?)-")
CUDNN_NAME = re.compile(r"^(lib)?cudnn[0-9]")


@dataclass(frozen=True)
class Expectation:
    """What the host must hold after the transaction."""

    packages: tuple[tuple[str, str], ...]  # planned (name, exact version)
    driver_version: str  # e.g. "580.95.05"
    cudnn_version: str  # e.g. "9.10.2.21"; "" when no cuDNN
    repo_url: str
    # False when the host's driver is kept: driver-named packages the transaction leaves
    # alone (an Ubuntu-archive nvidia-settings 510 beside a 580 driver) are then the
    # host's business, not this plan's; what the transaction installs is still judged.
    driver_moves: bool = True


@dataclass(frozen=True)
class Offered:
    installed: str  # "" when not installed
    available: tuple[str, ...]  # versions some repository offers (not just dpkg status)
    candidate: str = ""  # what `apt-get install NAME` would take under the preferences


def parse_policy(text: str) -> dict[str, Offered]:
    """`apt-cache policy a b ...` -> per package what is installed and what is offered."""
    result: dict[str, Offered] = {}
    name, installed, current, candidate = "", "", "", ""
    versions: list[str] = []
    in_repo: set[str] = set()

    def flush() -> None:
        if name:
            available = tuple(v for v in versions if v in in_repo)
            result[name] = Offered(installed, available, candidate)

    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            flush()
            name, installed, versions, current, in_repo = line[:-1], "", [], "", set()
            candidate = ""
            continue
        fields = line.split()
        if not fields or not name:
            continue
        if fields[0] == "Installed:":
            installed = "" if fields[1] == "(none)" else fields[1]
        elif fields[0] == "Candidate:":
            candidate = "" if fields[1] == "(none)" else fields[1]
        elif fields[0] == "Version":
            continue
        elif fields[0] == "***" or (len(fields) == 2 and fields[1].lstrip("-").isdigit()):
            current = fields[-2]
            versions.append(current)
        elif (
            fields[0].lstrip("-").isdigit() and current and fields[1:2] != ["/var/lib/dpkg/status"]
        ):
            in_repo.add(current)
    flush()
    return result


_SIM = re.compile(r"^(Inst|Remv|Purg) (\S+)(?: \[([^\]]+)\])?(?: \((\S+))?")


def parse_simulation(text: str) -> tuple[dict[str, str], set[str], list[str]]:
    """`apt-get -s install` -> (installed name -> version, removed names, apt errors)."""
    installs: dict[str, str] = {}
    removes: set[str] = set()
    errors = [line for line in text.splitlines() if line.startswith("E:")]
    for line in text.splitlines():
        match = _SIM.match(line)
        if match is None:
            continue
        action, name, _old, new = match.groups()
        name = name.split(":", 1)[0]
        if action == "Inst" and new:
            installs[name] = new
        elif action in ("Remv", "Purg"):
            removes.add(name)
    return installs, removes, errors


def upstream(version: str) -> str:
    bare = version.split(":", 1)[-1]
    return bare.rsplit("-", 1)[0] if "-" in bare else bare


def driver_release(name: str, version: str) -> str | None:
    """The driver release a package of NVIDIA's driver belongs to, else None."""
    if not DRIVER_NAME.match(name):
        return None
    match = DRIVER_VERSION.match(version)
    return match.group(1) if match else None


def off_plan(name: str, version: str, driver_version: str, cudnn_version: str) -> str:
    """The planned release glob when this NVIDIA package is at another release, else ""."""
    release = driver_release(name, version)
    if driver_version and release is not None and release != driver_version:
        return f"{driver_version}-*"
    if cudnn_version and CUDNN_NAME.match(name) and upstream(version) != cudnn_version:
        return f"{cudnn_version}-*"
    return ""


def stale_closure(
    installed: Mapping[str, str], driver_version: str, cudnn_version: str, skip: Sequence[str]
) -> list[str]:
    """Installed driver/cuDNN packages at another release: the transaction must move them
    too (apt leaves a dependency alone while an older version still satisfies ">=").
    `skip`: the planned packages and those the transaction removes."""
    return [
        name
        for name, version in sorted(installed.items())
        if name not in skip and off_plan(name, version, driver_version, cudnn_version)
    ]


def _newest(versions: Sequence[str], prefix: str) -> str:
    matching = [upstream(v) for v in versions if upstream(v).startswith(prefix)]
    numeric = [v for v in matching if re.fullmatch(r"[0-9]+(\.[0-9]+)*", v)]
    return max(numeric, key=parse_version) if numeric else ""


def missing_versions(expect: Expectation, offered: Mapping[str, Offered]) -> list[str]:
    problems = []
    branch = expect.driver_version.split(".", 1)[0] + "."
    for name, version in expect.packages:
        seen = offered.get(name)
        if seen is not None and (version in seen.available or seen.installed == version):
            continue
        if seen is None or not seen.available:
            problems.append(f"{name} is not in the repository {expect.repo_url}")
            continue
        text = f"{name} {version} is not in the repository; it offers " + ", ".join(
            sorted(seen.available, key=_sort_key)[-5:]
        )
        if driver_release(name, version) is not None:
            newest = _newest(seen.available, branch)
            if upstream(version) != newest and newest:
                text += f" (newest {branch}x is {newest})"
        problems.append(text)
    return problems


def _sort_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", version))


def wrong_landings(
    expect: Expectation,
    installed: Mapping[str, str],
    installs: Mapping[str, str],
    removes: set[str],
    refreshed: Mapping[str, str] = {},
) -> list[str]:
    """`refreshed`: name -> candidate of the packages moved after the transaction."""
    final = {n: v for n, v in installed.items() if n not in removes}
    final.update(installs)
    for name, candidate in refreshed.items():
        if name in final and candidate:
            final[name] = candidate
    problems = []
    for name, version in expect.packages:
        landed = final.get(name)
        if landed != version:
            problems.append(f"{name}: planned {version}, apt would leave {landed or 'nothing'}")
    planned = dict(expect.packages)
    touched = set(installs) | {n for n, c in refreshed.items() if c}
    for name, version in sorted(final.items()):
        driver = expect.driver_version if expect.driver_moves or name in touched else ""
        wanted = off_plan(name, version, driver, expect.cudnn_version)
        if name not in planned and wanted:
            problems.append(f"{name}: planned {wanted}, apt would land {version}")
    return problems


def judge(
    expect: Expectation, installed: Mapping[str, str], output: str, refresh: Sequence[str] = ()
) -> str | None:
    """None when apt would land exactly the plan; else the message to stop with.

    `refresh`: installed packages moved to their candidate after the transaction (those it
    did not remove), read from the policy part of `output`."""
    if UPDATE_FAILED in output:
        tail = output.split(UPDATE_FAILED, 1)[1].strip()
        return f"apt-get update failed for {expect.repo_url}: {tail[-600:]}"
    policy_text, _, simulation = output.partition(SIMULATE_MARK)
    offered = parse_policy(policy_text.split(POLICY_MARK, 1)[-1])
    missing = missing_versions(expect, offered)
    if missing:
        return (
            "planned NVIDIA packages are missing from the repository (nothing was installed): "
            + "; ".join(missing)
            + ": set nvidia_driver_version to a published release of the branch, or update "
            "autoglm_infra/stack/nvidia_stack.yaml"
        )
    installs, removes, errors = parse_simulation(simulation)
    if errors:
        return "apt cannot install the plan (nothing was installed): " + " ".join(errors)
    refreshed = {n: offered[n].candidate for n in refresh if n in offered}
    wrong = wrong_landings(expect, installed, installs, removes, refreshed)
    if wrong:
        return (
            "apt would install NVIDIA packages at other versions than planned (nothing was "
            "installed): " + "; ".join(wrong) + ": check /etc/apt/preferences.d for a pin "
            "of another release, or record the repository's dependency shape in "
            "autoglm_infra/stages/nvidia/nvidia_repo_packages.yaml"
        )
    return None


def check_script(
    names: Sequence[str],
    install_args: Sequence[str],
    prefs_name: str,
    prefs_text: str,
    private_state: bool = False,
) -> str:
    """apt-get update, then policy and a simulation under the preferences about to be written.

    The new closure pin goes into a scratch copy of /etc/apt/preferences.d, so nothing
    under /etc changes before the verdict. `private_state` (a `--dry` preview): apt-get
    update writes into a scratch copy of the package lists and caches, so the preview
    leaves /var/lib/apt and /var/cache/apt as they were (hard links where the filesystem
    allows: apt replaces a list by renaming, never in place).
    """
    q = shlex.quote
    args = " ".join(q(a) for a in install_args)
    state = ""
    if private_state:
        state = (
            'S=$(mktemp -d) && trap \'rm -rf "$T" "$S"\' EXIT && '
            'mkdir -p "$S/lists/partial" "$S/cache/archives/partial" && '
            '{ cp -al /var/lib/apt/lists/. "$S/lists/" 2>/dev/null || '
            'cp -a /var/lib/apt/lists/. "$S/lists/"; } && rm -f "$S/lists/lock"; '
            'A="-o Dir::State::Lists=$S/lists -o Dir::Cache=$S/cache"; '
        )
    return (
        "export LC_ALL=C DEBIAN_FRONTEND=noninteractive; A=; "
        "T=$(mktemp -d) && trap 'rm -rf \"$T\"' EXIT && "
        + state
        + f'if ! {apt_update_command("$A")} >"$T/update.log" 2>&1; then echo {UPDATE_FAILED}; '
        'tail -5 "$T/update.log"; exit 0; fi; rm -f "$T/update.log"; '
        '{ [ ! -d /etc/apt/preferences.d ] || cp -a /etc/apt/preferences.d/. "$T/"; } && '
        f'printf %s {q(prefs_text)} > "$T"/{q(prefs_name)}; '
        f'O="$A -o Dir::Etc::PreferencesParts=$T"; echo {POLICY_MARK}; '
        f"apt-cache $O policy {' '.join(q(n) for n in names)}; echo {SIMULATE_MARK}; "
        "apt-get $O -s -q --no-install-recommends --allow-downgrades "
        f"--allow-change-held-packages install {args} 2>&1; true"
    )
