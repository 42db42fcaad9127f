"""The python env stage for real: the CPU lock from a loopback PyPI-style index.

One host is converged with autoglm_infra/locks/cpu.txt from pypiserver on the
sandbox bridge
(wheels from the controller's content-keyed cache); then a lock whose extra wheel is
tampered in the index must fail and leave the first venv serving.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoglm_infra.common.hash_lock import DEFAULT_LOCKS_DIR, Lock
from autoglm_infra.stages.python_env import venv as pe
from autoglm_testbed.converge import describe_failure, run_pyinfra
from autoglm_testbed.hosts import Sandbox, SandboxHost, write_inventory
from autoglm_testbed.pypi_mirror import PypiMirror, WheelCache
from autoglm_testbed.world import controller_address

DEPLOY = "deploys/python_env.py"
VENV = "/opt/autoglm/venv"
SIX = (
    "six==1.17.0 --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"
    " --hash=sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81\n"
)


@pytest.fixture(scope="module")
def locks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lock, Path]:
    """The production CPU lock, and a locks dir whose cpu lock also pins six."""
    cpu = pe.load_lock("cpu", DEFAULT_LOCKS_DIR)
    changed = tmp_path_factory.mktemp("locks")
    shutil.copy(DEFAULT_LOCKS_DIR / "cpu.txt", changed / "cpu.txt")
    with (changed / "cpu.txt").open("a") as fh:
        fh.write(SIX)
    return cpu, changed


@pytest.fixture(scope="module")
def mirror(
    sandbox: Sandbox, locks: tuple[Lock, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PypiMirror]:
    wheels = WheelCache().ensure(pe.load_lock("cpu", locks[1]))  # superset: cpu + six
    sandbox._ensure_network()  # the bridge address the index binds to
    with PypiMirror(tmp_path_factory.mktemp("pypi"), controller_address(sandbox), wheels) as served:
        yield served


@pytest.fixture(scope="module")
def world(
    sandbox_hosts: Callable[..., list[SandboxHost]],
    mirror: PypiMirror,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SandboxHost, Path, dict[str, object]]:
    (host,) = sandbox_hosts(1)
    data: dict[str, object] = {
        "pip_index_url": mirror.index_url,
        "python_torch_index_url": None,  # the mirror holds torch+cpu too
        "nvidia_require_gpu": False,
        "serve_engine": "cpu",
    }
    inventory = tmp_path_factory.mktemp("python-env") / "inventory.py"
    write_inventory(inventory, [host], {}, data)
    return host, inventory, data


def venv_python(host: SandboxHost, code: str) -> str:
    return host.ssh(f"{VENV}/bin/python -c {code!r}").stdout.strip()


def test_cpu_lock_installs_and_second_converge_runs_no_pip(
    world: tuple[SandboxHost, Path, dict[str, object]],
) -> None:
    host, inventory, _ = world
    first = run_pyinfra(inventory, DEPLOY)
    assert first.returncode == 0, describe_failure(first)
    assert any("venv from lock cpu" in c for c in first.changed()), first.changed()

    code = "import torch, transformers; print(torch.__version__, transformers.__version__)"
    versions = venv_python(host, code)
    assert versions == "2.13.0+cpu 5.23.0"
    assert host.ssh(f"{VENV}/bin/python -m pip check").stdout.startswith("No broken")
    cache = host.ssh("stat -c '%U %a' /var/cache/autoglm /var/cache/autoglm/huggingface").stdout
    assert cache.split() == ["autoglm", "750", "autoglm", "750"]
    assert host.ssh("getent passwd autoglm").stdout.strip().endswith(":/usr/sbin/nologin")
    # the service user can use the venv but not change it
    target = host.ssh(f"readlink {VENV}").stdout.strip()
    assert host.ssh(f"stat -c '%U %a' {target}").stdout.split() == ["root", "755"]
    denied = host.ssh(f"runuser -u autoglm -- touch {target}/x", check=False)
    assert denied.returncode != 0
    assert venv_python(host, "print(1)") == "1"

    second = run_pyinfra(inventory, DEPLOY, debug=True)
    assert second.returncode == 0, describe_failure(second)
    assert second.changed() == []
    commands = [line for line in second.stderr.splitlines() if "Running command on " in line]
    assert len(commands) <= 2, commands  # host profile + one python env fact
    ran = [line.split("Running command on ", 1)[1] for line in commands]
    assert not any("-m pip" in c or "pip install" in c or "apt-get" in c for c in ran), ran


def test_tampered_index_file_fails_clearly_and_old_venv_keeps_serving(
    world: tuple[SandboxHost, Path, dict[str, object]],
    locks: tuple[Lock, Path],
    mirror: PypiMirror,
    tmp_path: Path,
) -> None:
    host, inventory, data = world
    assert run_pyinfra(inventory, DEPLOY).returncode == 0  # converged on the cpu lock
    before = host.ssh(f"readlink {VENV}").stdout.strip()

    mirror.tamper("six-1.17.0-py2.py3-none-any.whl")
    changed_inventory = tmp_path / "inventory.py"
    write_inventory(changed_inventory, [host], {}, {**data, "python_locks_dir": str(locks[1])})
    result = run_pyinfra(changed_inventory, DEPLOY)
    assert result.returncode != 0
    assert "hash mismatch" in result.stderr and "six" in result.stderr, result.stderr[-3000:]
    assert "still serves the previous venv" in result.stderr

    assert host.ssh(f"readlink {VENV}").stdout.strip() == before
    assert venv_python(host, "import torch, transformers; print('ok')") == "ok"
    builds = host.ssh(f"ls {pe.builds_dir(VENV)}").stdout.split()
    assert builds == [before.rsplit("/", 1)[1], "last-failed.log"], builds


def test_index_without_a_locked_file_fails_clearly(
    world: tuple[SandboxHost, Path, dict[str, object]], tmp_path: Path
) -> None:
    host, inventory, data = world
    assert run_pyinfra(inventory, DEPLOY).returncode == 0
    before = host.ssh(f"readlink {VENV}").stdout.strip()
    locks_dir = tmp_path / "locks"
    locks_dir.mkdir()
    text = (DEFAULT_LOCKS_DIR / "cpu.txt").read_text()
    (locks_dir / "cpu.txt").write_text(text + f"autoglm-absent==1.0 --hash=sha256:{'0' * 64}\n")
    changed_inventory = tmp_path / "inventory.py"
    write_inventory(changed_inventory, [host], {}, {**data, "python_locks_dir": str(locks_dir)})
    result = run_pyinfra(changed_inventory, DEPLOY)
    assert result.returncode != 0
    assert "the index has no file for a locked requirement" in result.stderr
    assert "autoglm-absent==1.0" in result.stderr, result.stderr[-3000:]
    assert host.ssh(f"readlink {VENV}").stdout.strip() == before


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["python_profile=gpu9"], ["python_profile='gpu9': unknown profile", "cpu"]),
        # serve_engine=vllm resolves the stack plan; CUDA 12.9 means flavour cu129, not locked here
        (
            ["serve_engine=vllm", "serve_engine_version=0.19.1", "cuda_version=12.9"],
            [
                "no lock for profile 'vllm-0.19.1-cu129' (resolved from the stack plan)",
                "lock_requirements.py",
            ],
        ),
        (["python_interpreter=/usr/bin/python9"], ["python_interpreter='/usr/bin/python9'"]),
    ],
)  # fmt: skip
def test_refusals_name_the_problem_and_change_nothing(
    world: tuple[SandboxHost, Path, dict[str, object]], data: list[str], expected: list[str]
) -> None:
    host, inventory, _ = world
    before = host.ssh(f"readlink {VENV} || true; ls {pe.builds_dir(VENV)} || true").stdout
    extra = [arg for item in data for arg in ("--data", item)]
    result = run_pyinfra(inventory, DEPLOY, *extra)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert host.ssh(f"readlink {VENV} || true; ls {pe.builds_dir(VENV)} || true").stdout == before
