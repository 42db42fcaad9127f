"""Pure core of the python env stage: profiles, locks, interpreter checks, build decisions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autoglm_infra.common.hash_lock import (
    DEFAULT_LOCKS_DIR,
    HashLockError,
    Lock,
    available_profiles,
    parse_lock,
    variant_file,
)
from autoglm_infra.config.validate import find_problems
from autoglm_infra.stages.python_env import venv as pe

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64
LOCK = f"""\
# Hash lock of profile 'demo'
# python: >=3.11,<3.12
# torch-index: cpu
# import-check: torch six
# expected-conflict: vllm 0.12.0 has requirement transformers<5
six==1.17.0 \\
    --hash=sha256:{H1}
    # via demo
torch==2.13.0+cpu \\
    --hash=sha256:{H2} \\
    --hash=sha256:{H3}
Typing_Extensions==4.16.0 --hash=sha256:{H1}
"""


def lock(text: str = LOCK) -> Lock:
    return parse_lock(text, "demo")


# --- profile selection and lock lookup -------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "engine", "expected"),
    [
        ("auto", "cpu", "cpu"),
        ("auto", "vllm", "vllm-cu128"),
        ("vllm-cu130", "cpu", "vllm-cu130"),  # explicit wins
        ("cpu", "vllm", "cpu"),
    ],
)
def test_select_profile(requested: str, engine: str, expected: str) -> None:
    assert pe.select_profile(requested, engine, "vllm-cu128") == expected


def test_shipped_locks_parse_and_cover_cpu_and_gpu() -> None:
    assert {"cpu", "vllm-cu128"} <= set(available_profiles(DEFAULT_LOCKS_DIR))
    cpu = pe.load_lock("cpu", DEFAULT_LOCKS_DIR)
    assert cpu.pins()["torch"] == "2.13.0+cpu" and cpu.torch_index == "cpu"
    assert cpu.pins()["transformers"].startswith("5.")
    gpu = pe.load_lock("vllm-cu128", DEFAULT_LOCKS_DIR)
    assert gpu.pins()["vllm"] == "0.12.0" and gpu.pins()["torch"] == "2.9.0"
    assert gpu.pins()["transformers"] == "5.0.0rc0"  # the overlay over vLLM's <5 pin
    assert gpu.pins()["nvidia-cuda-runtime-cu12"].startswith("12.8.")
    assert any("transformers<5" in c for c in gpu.expected_conflicts)


def test_unknown_profile_names_key_and_choices(tmp_path: Path) -> None:
    (tmp_path / "cpu.txt").write_text(LOCK)
    with pytest.raises(pe.PythonEnvError, match=r"python_profile='gpu9'.*unknown.*cpu"):
        pe.load_lock("gpu9", tmp_path, requested="gpu9")


def test_missing_lock_for_resolved_flavour_says_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "cpu.txt").write_text(LOCK)
    with pytest.raises(pe.PythonEnvError) as err:
        pe.load_lock("vllm-cu129", tmp_path)
    message = str(err.value)
    assert "no lock for profile 'vllm-cu129'" in message
    assert "scripts/lock_requirements.py vllm-cu129" in message and "cpu" in message


def test_the_lock_variant_for_the_hosts_python_minor_is_picked(tmp_path: Path) -> None:
    (tmp_path / "demo.txt").write_text(LOCK)  # python: >=3.11,<3.12
    py312 = LOCK.replace(">=3.11,<3.12", "==3.12.*").replace("six==1.17.0", "six==1.16.0")
    (tmp_path / variant_file("demo", "3.12")).write_text(py312)
    assert variant_file("demo", "3.12") == "demo.py312.txt"
    assert available_profiles(tmp_path) == ["demo"]  # a variant is not a profile
    assert pe.load_lock("demo", tmp_path, python_version="3.12.3").pins()["six"] == "1.16.0"
    assert pe.load_lock("demo", tmp_path, python_version="3.11.2").pins()["six"] == "1.17.0"
    # no variant for 3.10: the main lock, which check_interpreter then refuses with the fix
    fallback = pe.load_lock("demo", tmp_path, python_version="3.10.12")
    with pytest.raises(pe.PythonEnvError, match=r"lock_requirements.py demo --python 3.10"):
        pe.check_interpreter("/usr/bin/python3", "3.10.12", fallback)
    assert [v.source for v in pe.load_lock_variants("demo", tmp_path)] == [
        str(tmp_path / "demo.txt"),
        str(tmp_path / "demo.py312.txt"),
    ]


def test_shipped_gpu_lock_has_variants_for_ubuntu_pythons() -> None:
    for version in ("3.10.12", "3.11.2", "3.12.3"):  # Ubuntu 22.04, Debian 12, Ubuntu 24.04
        gpu = pe.load_lock("vllm-cu128", DEFAULT_LOCKS_DIR, python_version=version)
        pe.check_interpreter("/usr/bin/python3", version, gpu)
        assert gpu.pins()["vllm"] == "0.12.0" and gpu.pins()["torch"] == "2.9.0"
        assert gpu.pins()["transformers"] == "5.0.0rc0"


# --- lock parsing --------------------------------------------------------------------


def test_parse_lock_reads_metadata_hashes_and_local_labels() -> None:
    parsed = lock()
    assert parsed.pins() == {
        "six": "1.17.0",
        "torch": "2.13.0+cpu",
        "typing-extensions": "4.16.0",
    }
    assert parsed.requirements[1].hashes == (H2, H3)
    assert parsed.requirements[1].local_label == "cpu"
    assert parsed.import_check == ("torch", "six")
    assert parsed.expected_conflicts == ("vllm 0.12.0 has requirement transformers<5",)
    assert "3.11.2" in parsed.python and "3.12.0" not in parsed.python


def test_lock_without_hashes_is_refused() -> None:
    with pytest.raises(HashLockError, match="six has no --hash"):
        lock("six==1.17.0\n")


def test_unpinned_entry_is_refused() -> None:
    with pytest.raises(HashLockError, match="not 'name==version'"):
        lock(f"six>=1 --hash=sha256:{H1}\n")


def test_digest_ignores_comments_but_not_pins() -> None:
    base = lock()
    assert lock("# another comment\n" + LOCK).digest == base.digest
    assert lock(LOCK.replace("1.17.0", "1.16.0")).digest != base.digest
    assert lock(LOCK.replace(H3, "d" * 64)).digest != base.digest


# --- interpreter ---------------------------------------------------------------------


def test_interpreter_missing_too_old_and_out_of_lock_range() -> None:
    parsed = lock()
    pe.check_interpreter("/usr/bin/python3", "3.11.2", parsed)
    with pytest.raises(pe.PythonEnvError, match="not found"):
        pe.check_interpreter("/usr/bin/python3", None, parsed)
    with pytest.raises(pe.PythonEnvError, match=r"Python 3.9.2, too old.*>= 3.10"):
        pe.check_interpreter("/usr/bin/python3", "3.9.2", parsed)
    with pytest.raises(pe.PythonEnvError, match=r"resolved for Python.*--python 3.12"):
        pe.check_interpreter("/usr/bin/python3", "3.12.3", parsed)


# --- host state ----------------------------------------------------------------------


def test_dist_info_names_keep_local_labels() -> None:
    found = pe.parse_dist_info(
        [
            "/v/lib/python3.11/site-packages/torch-2.9.0+cu128.dist-info",
            "typing_extensions-4.16.0.dist-info",
        ]
    )
    assert found == {"torch": "2.9.0+cu128", "typing-extensions": "4.16.0"}


def converged(parsed: Lock, digest: str, **changes: object) -> pe.VenvState:
    fields: dict[str, object] = {
        "interpreter_version": "3.11.2",
        "link_target": pe.build_paths("/opt/v", digest)[0],
        "stamp": digest,
        "installed": {**parsed.pins(), "pip": "23.0.1"},
    }
    fields.update(changes)
    return pe.VenvState(**fields)  # type: ignore[arg-type]


def test_needs_build_decisions() -> None:
    parsed = lock()
    digest = pe.build_digest(parsed, "/usr/bin/python3")
    assert pe.needs_build(converged(parsed, digest), parsed, "/opt/v", digest) is None
    reasons = {
        "no venv": converged(parsed, digest, link_target=None),
        "not the build of this lock": converged(parsed, digest, link_target="/elsewhere"),
        "not built from this lock": converged(parsed, digest, stamp="0" * 64),
        "torch: locked 2.13.0+cpu, installed 2.13.0": converged(
            parsed, digest, installed={**parsed.pins(), "torch": "2.13.0"}
        ),
    }
    for expected, state in reasons.items():
        reason = pe.needs_build(state, parsed, "/opt/v", digest)
        assert reason is not None and expected in reason


def test_interpreter_change_changes_the_build() -> None:
    parsed = lock()
    assert pe.build_digest(parsed, "/usr/bin/python3") != pe.build_digest(
        parsed, "/usr/bin/python3.12"
    )


def test_rebuild_never_targets_the_directory_in_service() -> None:
    first, second = pe.build_paths("/opt/v", "e" * 64)
    assert first == "/opt/v.builds/" + "e" * 16
    assert pe.next_build_path("/opt/v", "e" * 64, None) == first
    assert pe.next_build_path("/opt/v", "e" * 64, first) == second
    assert pe.next_build_path("/opt/v", "e" * 64, second) == first


# --- install arguments and script ----------------------------------------------------


def test_index_args_add_torch_index_and_trust_plain_http_mirrors() -> None:
    parsed = lock()
    args = pe.index_args(parsed, "http://10.0.0.1:8080/simple/", "https://download.pytorch.org/whl")
    assert args == [
        "--index-url",
        "http://10.0.0.1:8080/simple/",
        "--extra-index-url",
        "https://download.pytorch.org/whl/cpu",
        "--trusted-host",
        "10.0.0.1",
    ]
    assert pe.index_args(parsed, None, None, ["--timeout=60"]) == ["--timeout=60"]


def test_cache_environment_is_under_the_cache_dir() -> None:
    env = pe.cache_environment("/var/cache/autoglm")
    wanted = {"HF_HOME", "TORCH_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"}
    assert set(env) == wanted
    assert all(v.startswith("/var/cache/autoglm/") for v in env.values())


def test_build_script_is_valid_shell_and_swaps_only_at_the_end() -> None:
    parsed = lock()
    digest = pe.build_digest(parsed, "/usr/bin/python3")
    new = pe.next_build_path("/opt/v", digest, None)
    script = pe.build_script(parsed, "/usr/bin/python3", "/opt/v", digest, new, "/tmp/l", [])
    subprocess.run(["sh", "-n", "-c", script], check=True)
    lines = script.splitlines()
    install = next(i for i, line in enumerate(lines) if "pip install" in line)
    swap = next(i for i, line in enumerate(lines) if "mv -Tf" in line)
    assert install < swap
    assert "--require-hashes --only-binary=:all: --no-deps" in lines[install]
    assert "grep -v -F -e 'vllm 0.12.0 has requirement transformers<5'" in script


def test_pip_check_filter_without_expected_conflicts_is_identity() -> None:
    assert pe.pip_check_filter([]) == "cat"


# --- configuration keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("python_profile", "GPU!", "lock profile name"),
        ("python_service_user", "root", "must not be root"),
        ("python_service_user", "Bad User", "POSIX user name"),
        ("python_venv_dir", "opt/venv", "absolute path"),
        ("python_pip_extra_args", ["--no-binary=:all:"], "bypass the hash lock"),
        ("python_pip_extra_args", ["--timeout 60"], "no spaces"),
        ("python_torch_index_url", "ftp://mirror/whl", "scheme"),
    ],
)
def test_bad_keys_are_named(key: str, value: object, reason: str) -> None:
    problems = find_problems({key: value})
    assert [p.key for p in problems] == [key]
    assert reason in problems[0].reason
