"""The rendered unit: systemd's own analysers, restart policy, secrets, GPU-safe sandboxing.

`systemd-analyze` (Debian package `systemd`) checks the real file: `verify` must print
nothing (it exits 0 on unknown keys, so output is the signal) and `security --offline`
must score <= 1.5.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm_infra.common.secrets import Secret, SecretError
from autoglm_infra.common.systemd_exec import exec_arg
from autoglm_infra.config.schema import Settings
from autoglm_infra.config.validate import find_problems
from autoglm_infra.stages.service.engine_args import engine_command
from autoglm_infra.stages.service.unit import (
    CREDENTIAL_PATH,
    UNIT_NAME,
    ServiceLayout,
    api_key_file_content,
    health_url,
    ip_allow,
    key_wrapper,
    model_check_command,
    render_unit,
)

MAX_EXPOSURE = 1.5


@pytest.fixture(scope="module")
def analyze() -> str:
    """systemd-analyze; missing is a failure (not a skip): apt-get install systemd."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd", pytrace=False)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> ServiceLayout:
    """A venv whose engine binaries exist: verify checks ExecStart= executables."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "transformers"):
        (venv / "bin" / name).write_text("#!/bin/sh\n")
        (venv / "bin" / name).chmod(0o755)
    return ServiceLayout(str(venv), "autoglm", "autoglm", "/var/cache/autoglm")


def sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """Unit file -> {section: [(key, value), ...]} keeping repeated keys."""
    found: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            found[current] = []
            continue
        key, _, value = line.partition("=")
        found[current].append((key, value))
    return found


def values(text: str, section: str, key: str) -> list[str]:
    return [v for k, v in sections(text)[section] if k == key]


def write_unit(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "units" / UNIT_NAME
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


VARIANTS: list[dict[str, Any]] = [
    {},
    {"serve_engine": "cpu"},
    {"serve_engine": "cpu", "serve_cpu_threads": 1},
    {"serve_engine": "sglang"},
    {"serve_host": "0.0.0.0", "service_allow_from": ["10.0.0.0/8"], "vllm_max_num_seqs": 8},
    {"serve_host": "::", "serve_extra_args": ["--seed", "1", ";", "100%", "$HOME", 'a"b']},
]


@pytest.mark.parametrize("data", VARIANTS)
def test_verify_prints_nothing(
    tmp_path: Path, layout: ServiceLayout, analyze: str, data: dict[str, Any]
) -> None:
    unit = write_unit(tmp_path, render_unit(Settings(**data), layout))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, cwd=unit.parent
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


@pytest.mark.parametrize("data", VARIANTS)
def test_security_exposure_at_most_1_5(
    tmp_path: Path, layout: ServiceLayout, analyze: str, data: dict[str, Any]
) -> None:
    unit = write_unit(tmp_path, render_unit(Settings(**data), layout))
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=15", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        cwd=unit.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE
    assert result.returncode == 0, result.stdout[-1500:]


def test_restart_policy_and_crash_loop_limit(layout: ServiceLayout) -> None:
    settings = Settings(service_restart_sec=7, service_start_limit_burst=3)
    text = render_unit(settings, layout)
    assert values(text, "Unit", "StartLimitIntervalSec") == ["1800"]
    assert values(text, "Unit", "StartLimitBurst") == ["3"]
    assert not values(text, "Service", "StartLimitBurst")  # ignored there by systemd
    assert values(text, "Service", "Type") == ["exec"]
    assert values(text, "Service", "Restart") == ["on-failure"]
    assert values(text, "Service", "RestartSec") == ["7"]
    assert values(text, "Service", "KillMode") == ["mixed"]
    assert values(text, "Service", "TimeoutStartSec") == ["1500"]
    assert values(text, "Service", "LimitNOFILE") == ["65535"]


def test_health_gate_polls_bound_address_within_start_timeout(layout: ServiceLayout) -> None:
    text = render_unit(Settings(serve_port=8123, service_start_timeout_sec=600), layout)
    (post,) = values(text, "Service", "ExecStartPost")
    assert post.split()[2:] == ["http://127.0.0.1:8123/health", "585"]
    assert values(text, "Service", "TimeoutStartSec") == ["600"]


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000/health"),
        ("0.0.0.0", "http://127.0.0.1:8000/health"),
        ("::", "http://[::1]:8000/health"),
        ("10.1.2.3", "http://10.1.2.3:8000/health"),
    ],
)
def test_health_url(host: str, url: str) -> None:
    assert health_url(Settings(serve_host=host)) == url


def test_ip_allow_adds_bound_address_and_clients() -> None:
    assert ip_allow(Settings()) == ["localhost"]
    assert ip_allow(Settings(serve_host="10.1.2.3", service_allow_from=["10.9.0.0/16"])) == [
        "localhost",
        "10.1.2.3",
        "10.9.0.0/16",
    ]


def test_gpu_safe_sandboxing(layout: ServiceLayout) -> None:
    text = render_unit(Settings(), layout)
    service = dict(sections(text)["Service"])
    assert service["DevicePolicy"] == "closed"
    assert service["DeviceAllow"] == "char-nvidia* rw"
    for breaks_cuda in ("PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset"):
        assert breaks_cuda not in service
    assert not any("@resources" in v for v in values(text, "Service", "SystemCallFilter"))
    assert service["ProtectClock"] == "yes"  # safe only because DeviceAllow lists nvidia
    assert service["ReadWritePaths"] == "/var/cache/autoglm"
    assert service["User"] == "autoglm"


def test_key_is_a_credential_not_in_the_unit(layout: ServiceLayout) -> None:
    text = render_unit(Settings(), layout)
    assert values(text, "Service", "LoadCredential") == [f"api-key:{CREDENTIAL_PATH}"]
    assert "--api-key" not in text
    assert not any("API_KEY=" in v for v in values(text, "Service", "Environment"))


def test_missing_model_fails_start_with_one_clear_line(tmp_path: Path) -> None:
    check = model_check_command(str(tmp_path / "model"))
    missing = subprocess.run(check, capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"{tmp_path}/model/config.json not found: model_dir is wrong or the model stage has not run"
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert subprocess.run(check).returncode == 0


def test_key_wrapper_exports_credential_then_execs(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("s3cret-key\n")
    prefix = key_wrapper(engine_command(Settings(), "/venv"))
    probe = ["/bin/sh", "-c", 'printf "%s|%s" "$VLLM_API_KEY" "$0"', "probe"]
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    out = subprocess.run([*prefix, *probe], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout == "s3cret-key|probe"
    (tmp_path / "api-key").unlink()
    missing = subprocess.run([*prefix, *probe], capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "no API key credential" in missing.stderr


@pytest.mark.parametrize("key", ["s3cret-key", "it's\"a:#{key}%s\\n"])
def test_sglang_key_wrapper_writes_the_key_as_yaml_then_execs(tmp_path: Path, key: str) -> None:
    """SGLang reads the key from the YAML file --config names; any printable key survives."""
    (tmp_path / "api-key").write_text(key + "\n")
    config = tmp_path / "run" / "sglang-api-key.yaml"
    config.parent.mkdir()
    command = replace(
        engine_command(Settings(serve_engine="sglang"), "/venv"), key_config=str(config)
    )
    prefix = key_wrapper(command)
    probe = ["/bin/sh", "-c", 'printf "%s" "$0"; stat -c " %a" "$1"', "probe", str(config)]
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    out = subprocess.run([*prefix, *probe], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout == "probe 600\n", out.stderr
    assert yaml.safe_load(config.read_text()) == {"api-key": key}
    assert key not in " ".join(prefix)
    (tmp_path / "api-key").unlink()
    missing = subprocess.run([*prefix, *probe], capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "no API key credential" in missing.stderr


def test_sglang_unit_starts_sglang_serve_with_the_same_hardening(layout: ServiceLayout) -> None:
    vllm_text = render_unit(Settings(), layout)
    text = render_unit(Settings(serve_engine="sglang"), layout)
    (start,) = values(text, "Service", "ExecStart")
    assert f"{layout.venv}/bin/sglang serve --model-path /srv/autoglm/models/" in start
    assert "--config /run/autoglm-serve/sglang-api-key.yaml" in start
    assert values(text, "Service", "ExecStartPost") == values(vllm_text, "Service", "ExecStartPost")
    assert values(text, "Service", "LoadCredential") == ["api-key:/etc/autoglm/credentials/api-key"]

    def hardening(unit: str) -> list[str]:
        skip = ("ExecStart=", "Description=", "Environment=")
        section = unit.split("[Service]", 1)[1]
        return [line for line in section.splitlines() if line and not line.startswith(skip)]

    assert hardening(text) == hardening(vllm_text)


def test_cpu_engine_threads_are_set_in_the_unit_only_when_configured(
    layout: ServiceLayout,
) -> None:
    unit = render_unit(Settings(serve_engine="cpu", serve_cpu_threads=2), layout)
    assert '\nEnvironment="OMP_NUM_THREADS=2"\n' in unit
    assert "OMP_NUM_THREADS" not in render_unit(Settings(serve_engine="cpu"), layout)
    assert "OMP_NUM_THREADS" not in render_unit(Settings(serve_cpu_threads=2), layout)  # vLLM


def test_cpu_engine_has_no_key_wrapper_but_a_hub_alias(layout: ServiceLayout) -> None:
    text = render_unit(Settings(serve_engine="cpu", model_dir="/srv/m"), layout)
    (start,) = values(text, "Service", "ExecStart")
    assert start.startswith(f"{layout.venv}/bin/transformers serve autoglm-phone-9b ")
    check, alias = values(text, "Service", "ExecStartPre")
    assert "test -r /srv/m/config.json" in check
    assert "models--autoglm-phone-9b" in alias and "ln -sfn /srv/m " in alias
    env = values(text, "Service", "Environment")
    assert '"HF_HUB_CACHE=/run/autoglm-serve/hub"' in env and '"HF_HUB_OFFLINE=1"' in env


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("--port", "--port"),
        ("/srv/a b", '"/srv/a b"'),
        ("100%", '"100%%"'),
        ("$HOME", '"$$HOME"'),
        ('{"image":10}', '"{\\"image\\":10}"'),
        (";", "\\;"),
    ],
)
def test_systemd_exec_arg_quoting(arg: str, quoted: str) -> None:
    assert exec_arg(arg) == quoted


def test_api_key_file_content() -> None:
    assert api_key_file_content(Secret("abc123", "env K")) == b"abc123\n"
    with pytest.raises(SecretError, match="env K"):
        api_key_file_content(Secret("two words", "env K"))


def test_start_limit_that_could_never_trigger_is_refused_naming_the_key() -> None:
    problems = find_problems(
        {"service_restart_sec": 30, "service_start_limit_burst": 5,
         "service_start_limit_interval_sec": 100}
    )  # fmt: skip
    assert [p.key for p in problems] == ["service_start_limit_interval_sec"]
    assert "crash loop never ends in 'failed'" in problems[0].reason
    bad = find_problems({"service_allow_from": ["clients.example.com"]})
    assert [p.key for p in bad] == ["service_allow_from"]
