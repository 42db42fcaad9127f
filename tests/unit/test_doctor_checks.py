"""The doctor's model, service, venv, cache, container and reachability checks (pure)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from autoglm_infra.common.checks import Check
from autoglm_infra.common.hash_lock import parse_lock
from autoglm_infra.config.schema import Settings
from autoglm_infra.doctor.env import (
    cache_checks,
    engine_versions_check,
    pip_check_check,
    venv_lock_check,
)
from autoglm_infra.doctor.model import (
    context_length_check,
    lock_from_plan,
    max_positions,
    model_files_check,
    model_format_check,
)
from autoglm_infra.doctor.network import reach_checks, reach_targets
from autoglm_infra.doctor.probe import CacheDir, Container, Reach, parse_doctor_probe
from autoglm_infra.doctor.service import containers_check, health_check, unit_check
from autoglm_infra.stages.model.state import FileStat, ModelDirState, Stamp

SHA = "ab" * 32
PLAN = json.dumps(
    {"repo": "zai-org/AutoGLM-Phone-9B", "commit": "c" * 40, "files": [
        {"path": "config.json", "size": 10, "digest": "gitsha1:" + "d" * 40},
        {"path": "model-00001-of-00002.safetensors", "size": 100, "digest": f"sha256:{SHA}"},
        {"path": "model-00002-of-00002.safetensors", "size": 100, "digest": f"sha256:{SHA}"},
    ]}
)  # fmt: skip
INDEX = json.dumps(
    {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
)
LOCK = parse_lock(
    "# expected-conflict: vllm 0.12.0 has requirement transformers<5\n"
    f"torch==2.9.0+cu128 --hash=sha256:{SHA}\n"
    f"transformers==5.0.0rc0 --hash=sha256:{SHA}\n"
    f"shellingham==1.5.4 --hash=sha256:{SHA}\n",
    "vllm-cu128",
)


def verified_dir(*drop: str) -> ModelDirState:
    lock = lock_from_plan(PLAN)
    assert lock is not None
    files, stamps = {}, {}
    for n, f in enumerate(lock.files):
        files[f.path] = FileStat(f.size, 1000 + n, 50 + n)
        stamps[f.path] = Stamp(f.size, 1000 + n, 50 + n, f.digest)
    return ModelDirState(True, {p: s for p, s in files.items() if p not in drop}, stamps)


def test_verified_model_is_ok_and_a_missing_shard_fails() -> None:
    lock = lock_from_plan(PLAN)
    assert model_files_check(verified_dir(), lock, "/m").status == "ok"
    broken = model_files_check(verified_dir("model-00002-of-00002.safetensors"), lock, "/m")
    assert broken.status == "fail"
    assert "missing: model-00002-of-00002.safetensors" in broken.evidence
    assert "deploys/model.py" in broken.fix


def test_changed_and_truncated_files_fail_and_extras_warn() -> None:
    lock = lock_from_plan(PLAN)
    state = verified_dir()
    files = dict(state.files)
    files["config.json"] = FileStat(10, 999, 50)  # touched: same size, new mtime
    files["model-00001-of-00002.safetensors"] = FileStat(60, 1001, 51)  # truncated
    check = model_files_check(ModelDirState(True, files, state.stamps), lock, "/m")
    assert check.status == "fail"
    assert "wrong size (incomplete or corrupted): model-00001" in check.evidence
    assert "changed since verified (size, mtime or inode): config.json" in check.evidence
    files = {**state.files, "stray.bin": FileStat(1, 1, 1)}
    extra = model_files_check(ModelDirState(True, files, state.stamps), lock, "/m")
    assert extra.status == "warn" and "model_prune: true" in extra.fix


def test_model_without_plan_or_directory() -> None:
    assert model_files_check(ModelDirState(), None, "/m").status == "fail"
    assert model_files_check(verified_dir(), lock_from_plan("{broken"), "/m").status == "warn"


def test_index_naming_absent_files_or_corrupted_fails() -> None:
    texts = {"config.json": "{}", "model.safetensors.index.json": INDEX}
    assert model_format_check(verified_dir(), texts).status == "ok"
    absent = model_format_check(verified_dir("model-00002-of-00002.safetensors"), texts)
    assert absent.status == "fail" and "model-00002-of-00002.safetensors" in absent.evidence
    corrupt = model_format_check(verified_dir(), {**texts, "model.safetensors.index.json": "{"})
    assert corrupt.status == "fail" and "not JSON" in corrupt.evidence
    no_config = model_format_check(verified_dir(), {"model.safetensors.index.json": INDEX})
    assert no_config.status == "fail" and "config.json missing" in no_config.evidence
    no_weights = ModelDirState(True, {"config.json": FileStat(2, 1, 1)})
    assert model_format_check(no_weights, {"config.json": "{}"}).status == "fail"


def test_context_length_against_max_position_embeddings() -> None:
    glm = json.dumps({"text_config": {"max_position_embeddings": 65536}})
    assert max_positions(glm) == 65536
    assert context_length_check(glm, 25480, "vllm", model_exists=True).status == "ok"
    over = context_length_check(
        json.dumps({"max_position_embeddings": 2048}), 25480, "vllm", model_exists=True
    )
    assert over.status == "fail" and over.fix == "set vllm_max_model_len to 2048 or less"
    assert context_length_check(glm, 99999, "cpu", model_exists=True).status == "skip"
    small = json.dumps({"max_position_embeddings": 2048})
    sglang = context_length_check(small, 25480, "sglang", model_exists=True)
    assert sglang.status == "fail" and "SGLang refuses to start" in sglang.evidence
    assert context_length_check("{}", 25480, "vllm", model_exists=True).status == "warn"
    absent = context_length_check(None, 25480, "vllm", model_exists=False)
    assert absent.status == "skip" and "no model directory" in absent.evidence


def test_unit_states() -> None:
    def props(
        active: str, sub: str, result: str = "success", restarts: str = "0"
    ) -> dict[str, str]:
        return {"LoadState": "loaded", "ActiveState": active, "SubState": sub,
                "Result": result, "NRestarts": restarts}  # fmt: skip

    unit = "autoglm-serve.service"
    assert unit_check(unit, props("active", "running")).status == "ok"
    assert unit_check(unit, props("active", "running", restarts="2")).status == "warn"
    loop = unit_check(unit, props("activating", "auto-restart", "exit-code", "3"))
    assert loop.status == "fail" and "crash loop" in loop.evidence
    failed = unit_check(unit, props("failed", "failed", "exit-code", "5"))
    assert failed.status == "fail" and "reset-failed" in failed.fix
    stopped = unit_check(unit, props("inactive", "dead"))
    assert stopped.status == "fail" and "systemctl start" in stopped.fix
    assert unit_check(unit, {"LoadState": "not-found"}).status == "fail"
    assert unit_check(unit, {}).status == "skip"


def test_health_from_the_smoke_tool() -> None:
    ok = health_check(['{"ok": true, "models": ["autoglm-phone-9b"]}'], "u")
    assert ok.status == "ok"
    bad = health_check(['{"ok": false, "error": "no answer: Connection refused"}'], "u")
    assert bad.status == "fail" and "Connection refused" in bad.evidence
    assert health_check([], "u").status == "fail"


def test_health_tells_apart_listener_key_file_refused_key_and_broken_tool() -> None:
    def row(kind: str, error: str) -> Check:
        line = json.dumps({"ok": False, "error": error, "kind": kind})
        return health_check([line], "autoglm-serve.service", "/etc/autoglm/credentials/api-key")

    fixes = {
        row("no-listener", "no answer: [Errno 111] Connection refused").fix,
        row("key-file", "API key file /etc/autoglm/credentials/api-key: No such file").fix,
        row("key-refused", "HTTP 401 from http://127.0.0.1:8000/v1/models").fix,
        row("broken", "/v1/models lists [], not the served name").fix,
    }
    assert len(fixes) == 4
    assert "systemctl start" in row("no-listener", "x").fix
    assert "deploys/service.py" in row("key-file", "x").fix
    assert "systemctl restart" in row("key-refused", "x").fix
    crashed = health_check(["Traceback (most recent call last):", "KeyError: 'x'"], "u")
    assert crashed.status == "fail" and "python3" not in crashed.fix
    missing = health_check(["sh: 1: python3: not found"], "u")
    assert "install python3" in missing.fix


def test_containers_privileged_exposed_unhealthy() -> None:
    good = Container("autoglm", "running", "healthy", False, ("127.0.0.1",))
    assert containers_check(True, [good], "autoglm").status == "ok"
    assert containers_check(False, [], "autoglm").status == "skip"
    bad = [
        Container("autoglm", "running", "unhealthy", False, ("127.0.0.1",)),
        Container("other", "running", "", True, ("0.0.0.0", "")),
    ]
    check = containers_check(True, bad, "autoglm")
    assert check.status == "fail"
    assert "privileged: other" in check.evidence and "all interfaces: other" in check.evidence
    assert "autoglm is unhealthy" in check.evidence and "127.0.0.1:PORT:PORT" in check.fix


def test_venv_drift_engine_versions_and_pip_check() -> None:
    installed = {"torch": "2.9.0+cu128", "transformers": "5.0.0rc0", "shellingham": "1.5.4"}
    assert venv_lock_check(LOCK, installed, "/v").status == "ok"
    assert venv_lock_check(LOCK, None, "/v").status == "fail"
    drifted = {**installed, "transformers": "4.57.1"}
    del drifted["shellingham"]
    check = venv_lock_check(LOCK, drifted, "/v")
    assert (
        check.status == "fail" and "shellingham: locked 1.5.4, installed nothing" in check.evidence
    )
    engine = engine_versions_check(LOCK, {**installed, "torch": "2.9.0"})
    assert engine.status == "fail" and "torch 2.9.0+cu128" in engine.evidence
    accepted = ["vllm 0.12.0 has requirement transformers<5, but you have transformers 5.0.0rc0."]
    assert pip_check_check(accepted, LOCK.expected_conflicts).status == "ok"
    broken = pip_check_check(["typer 0.29.2 requires shellingham, which is not installed."], [])
    assert broken.status == "fail" and "shellingham" in broken.evidence
    assert pip_check_check(None, []).status == "skip"


def test_caches_unwritable_missing_or_on_root() -> None:
    wanted = ["/c", "/c/hf"]
    good = {"/c": CacheDir("/c", True, "autoglm", "750", True, "/data"),
            "/c/hf": CacheDir("/c/hf", True, "autoglm", "750", True, "/data")}  # fmt: skip
    perms, where = cache_checks(good, wanted, "autoglm")
    assert (perms.status, where.status) == ("ok", "ok")
    bad = {**good, "/c/hf": CacheDir("/c/hf", True, "root", "750", False, "/")}
    perms, where = cache_checks(bad, wanted, "autoglm")
    assert perms.status == "fail" and "not writable by autoglm: /c/hf (root 750)" in perms.evidence
    assert where.status == "warn" and "python_cache_dir" in where.fix
    perms, _ = cache_checks({"/c": good["/c"]}, wanted, "autoglm")
    assert perms.status == "fail" and "missing: /c/hf" in perms.evidence


def test_reach_targets_and_results() -> None:
    settings = Settings(proxy_url="http://proxy:3128", pip_index_url="http://mirror/simple")
    targets = reach_targets(settings)
    assert [k for k, _ in targets] == ["proxy", "pip index", "model hub"]
    found = [
        Reach("proxy", "http://proxy:3128", "tcp connect"),
        Reach("pip index", "http://mirror/simple", "error [Errno 111] Connection refused"),
    ]
    checks = {c.name: c for c in reach_checks(targets, found)}
    assert checks["reach proxy"].status == "ok"
    assert (
        checks["reach pip index"].status == "fail"
        and "pip_index_url" in checks["reach pip index"].fix
    )
    assert checks["reach model hub"].status == "fail"  # not probed at all


def test_parse_probe_sorts_tagged_lines() -> None:
    lines = [
        "MD",
        "ML\t100\t1732215245.5\t51\tmodel-00001-of-00002.safetensors",
        f"MT\tconfig.json\t{json.dumps({'max_position_embeddings': 2048})}",
        "SV ActiveState=active",
        "SV NRestarts=0",
        "VENV",
        "VS abc",
        "VD torch-2.13.0+cpu.dist-info",
        "VC No broken requirements found.",
        "VCEND",
        "CD\tautoglm 750\tw\t/\t/var/cache/autoglm",
        "CD\t-\t-\t-\t/var/cache/autoglm/xdg",
        "DOCKER",
        'DK /autoglm|running|healthy|false|{"8000/tcp":[{"HostIp":"127.0.0.1","HostPort":"8000"}]}',
        "NR\tpip index\thttp://m/simple\thttp 200",
        'SM {"ok": true, "models": ["m"]}',
    ]
    probe = parse_doctor_probe(lines)
    assert probe.model.exists and "model-00001-of-00002.safetensors" in probe.model.files
    assert max_positions(probe.model_texts["config.json"]) == 2048
    assert probe.unit == {"ActiveState": "active", "NRestarts": "0"}
    assert probe.venv_dists == {"torch": "2.13.0+cpu"} and probe.venv_stamp == "abc"
    assert probe.pip_check == ["No broken requirements found."]
    assert probe.caches["/var/cache/autoglm"].writable
    assert not probe.caches["/var/cache/autoglm/xdg"].exists
    assert probe.containers == [Container("autoglm", "running", "healthy", False, ("127.0.0.1",))]
    assert probe.reach[0].answered and probe.smoke == ['{"ok": true, "models": ["m"]}']
    assert parse_doctor_probe([]).venv_dists is None


def test_doctor_script_runs_in_a_real_shell(tmp_path: Path) -> None:
    """The whole probe in sh: model files, caches, reachability of a closed port, smoke."""
    from autoglm_infra.doctor.facts import doctor_script

    model = tmp_path / "model"
    (model / ".autoglm").mkdir(parents=True)
    (model / "config.json").write_text('{\n "max_position_embeddings": 2048\n}\n')
    (model / "model.safetensors").write_bytes(b"x")
    (model / ".autoglm" / "plan.json").write_text(PLAN)
    cache = tmp_path / "cache"
    cache.mkdir()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        script = doctor_script(
            str(model), "autoglm-doctor-test.service", None, "root", [str(cache)],
            [("pip index", f"http://127.0.0.1:{port}/simple/")], [],
            ["--base-url", f"http://127.0.0.1:{port}", "--model", "m", "--tries", "1", "--no-chat"],
        )  # fmt: skip
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    probe = parse_doctor_probe(out.stdout.splitlines())
    assert set(probe.model.files) == {"config.json", "model.safetensors"}
    assert max_positions(probe.model_texts["config.json"]) == 2048
    assert lock_from_plan(probe.model_texts["plan.json"]) is not None
    assert probe.caches[str(cache)].exists and probe.caches[str(cache)].mount
    assert probe.reach and not probe.reach[0].answered, out.stdout
    assert health_check(probe.smoke, "u").status == "fail"
    assert "no answer" in health_check(probe.smoke, "u").evidence
