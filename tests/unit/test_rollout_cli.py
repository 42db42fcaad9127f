"""Bad input to the rollout command: a clear error naming the flag or host, and no host is
contacted (the inventory's addresses are TEST-NET ones nothing answers on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def inventory(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "inventory.py"
    path.write_text(body)
    return path


FLEET = """gpu_servers = [
    ("gpu-01", {"ssh_hostname": "192.0.2.1"}),
    ("gpu-02", {"ssh_hostname": "192.0.2.2"}),
    ("gpu-03", {"ssh_hostname": "192.0.2.3"}),
]
"""


def rollout(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoglm_infra.rollout", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--batch-size", "0"], "--batch-size 0: a batch needs at least 1 host; give 1 to 3"),
        (["--batch-size", "4"], "--batch-size 4 is larger than the fleet (3 hosts"),
        (["--batch-size", "1", "--limit", "gpu-9*"], "--limit gpu-9* matches no host or group"),
        (["--batch-size", "1", "--max-failures", "-1"], "--max-failures -1: give 0 or more"),
    ],
)
def test_bad_flags_stop_before_any_host(tmp_path: Path, args: list[str], says: str) -> None:
    result = rollout(inventory(tmp_path, FLEET), "deploys/full.py", *args)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr and "Connecting" not in result.stderr


def test_a_missing_gate_deploy_is_named(tmp_path: Path) -> None:
    args = ["--batch-size", "2", "--limit", "gpu-0[12]", "--gate-deploy", "nope.py"]
    result = rollout(inventory(tmp_path, FLEET), "deploys/full.py", *args)
    assert result.returncode == 2 and "--gate-deploy nope.py: no such file" in result.stderr


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (FLEET.replace("]\n", '    ("gpu-02", {"ssh_hostname": "192.0.2.2"}),\n]\n'),
         "host gpu-02 is listed twice in group gpu_servers"),
        (FLEET.replace('"192.0.2.3"', '"192.0.2.1"'),
         "hosts gpu-01 and gpu-03 have the same address 192.0.2.1:22"),
        # each batch runs with --limit NAME, which pyinfra reads as a group or a glob
        (FLEET.replace('"gpu-03"', '"gpu_servers"'), "host name(s) gpu_servers would select"),
        (FLEET.replace('"gpu-03"', '"gpu-0?"'), "host name(s) gpu-0? would select"),
    ],
)  # fmt: skip
def test_an_inventory_with_duplicate_hosts_is_refused(tmp_path: Path, body: str, says: str) -> None:
    result = rollout(inventory(tmp_path, body), "deploys/full.py", "--batch-size", "1")
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "nothing was changed" in result.stderr
    assert "Connecting" not in result.stderr


def test_a_missing_inventory_is_named(tmp_path: Path) -> None:
    result = rollout(tmp_path / "nope.py", "deploys/full.py", "--batch-size", "1")
    assert result.returncode == 2 and "nope.py: no such file" in result.stderr


def test_an_unreachable_canary_stops_the_rollout_before_the_next_batch(tmp_path: Path) -> None:
    body = FLEET.replace('"}', '", "ssh_connect_timeout": 3}')
    result = rollout(inventory(tmp_path, body), "deploys/full.py", "--batch-size", "2")
    assert result.returncode == 1, result.stderr
    summary = result.stderr.split("--> Rollout summary:")[1].splitlines()
    assert summary[1].startswith("    gpu-01: unreachable: [gpu-01] Could not connect"), summary
    assert summary[2:] == [
        "    gpu-02: not reached: left as it was",
        "    gpu-03: not reached: left as it was",
        "    rollout stopped: 1 host(s) failed, more than --max-failures 0",
        "    on the new state: none",
        "    not on the new state: gpu-01, gpu-02, gpu-03",
    ]
    assert "192.0.2.2" not in result.stderr  # the next batch was never contacted


def test_arguments_after_a_double_dash_go_to_pyinfra() -> None:
    from autoglm_infra.pyinfra_ext.rollout import parse_args

    args = parse_args(["inv.py", "--batch-size", "2", "--", "--data", "serve_port=8001"])
    assert (args.deploy, args.batch_size, args.extra) == (
        "deploys/full.py",
        2,
        ["--data", "serve_port=8001"],
    )
