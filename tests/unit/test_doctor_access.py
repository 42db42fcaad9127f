"""The doctor's SELinux/AppArmor, mount, model-access, stale-cache and proxy-aware checks.

SELinux and AppArmor cannot be switched on in the nspawn sandbox, so their checks run here
against /sys and /proc contents recorded on RHEL 9 (SELinux) and Ubuntu 24.04 (AppArmor).
"""

from __future__ import annotations

import base64
import http.server
import os
import subprocess
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from autoglm_infra.doctor.env import (
    cache_mount_check,
    cache_ownership_check,
    stale_cache_check,
)
from autoglm_infra.doctor.lsm import apparmor_check, selinux_check, selinux_type
from autoglm_infra.doctor.model import model_access_check
from autoglm_infra.doctor.network import reach_checks, through_proxy
from autoglm_infra.doctor.probe import (
    CacheEntry,
    PathAccess,
    Reach,
    as_user_prefix,
    cache_entries_section,
    lsm_section,
    model_access_section,
    parse_doctor_probe,
    paths_section,
    reach_section,
)
from autoglm_infra.stages.model.hub_client import fetch_lock
from autoglm_infra.stages.model.lock import download_url
from autoglm_testbed.hub_standin import HubStandin, make_test_repo

MODEL = "/srv/autoglm/models/AutoGLM-Phone-9B"
CACHE = "/var/cache/autoglm"
RW = ("rw", "relatime")


def access(path: str, role: str, context: str = "", options: tuple[str, ...] = RW) -> PathAccess:
    return PathAccess(path, role, True, "/data", "xfs", options, context, "rwx")


# -- recorded LSM states ------------------------------------------------------------------


def probe_lines(sys_files: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Run the real LSM section against a recorded /sys tree under tmp_path."""
    for rel, content in sys_files.items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    script = lsm_section("autoglm-doctor-test-absent.service", root=str(tmp_path))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    return parse_doctor_probe(out.stdout.splitlines()).lsm


def test_lsm_section_reads_recorded_sysfs(tmp_path: Path) -> None:
    lsm = probe_lines(
        {"sys/fs/selinux/enforce": "1", "sys/module/apparmor/parameters/enabled": "Y\n"},
        tmp_path,
    )
    assert lsm == {"selinux": "1", "apparmor": "Y"}
    assert probe_lines({}, tmp_path / "none") == {}


def test_selinux_off_permissive_and_enforcing_with_good_labels() -> None:
    paths = {MODEL: access(MODEL, "model", "system_u:object_r:var_t:s0")}
    assert selinux_check({}, paths, docker=False).status == "ok"
    assert "permissive" in selinux_check({"selinux": "0"}, paths, docker=False).evidence
    recorded = {"selinux": "1", "confinement": "system_u:system_r:unconfined_service_t:s0"}
    ok = selinux_check(recorded, paths, docker=False)
    assert ok.status == "ok" and "unconfined_service_t" in ok.evidence and "var_t" in ok.evidence


def test_selinux_moved_from_home_fails_with_restorecon() -> None:
    paths = {
        MODEL: access(MODEL, "model", "unconfined_u:object_r:admin_home_t:s0"),
        CACHE: access(CACHE, "home", "system_u:object_r:var_t:s0"),
    }
    check = selinux_check({"selinux": "1"}, paths, docker=False)
    assert check.status == "fail" and f"{MODEL} admin_home_t" in check.evidence
    assert f"restorecon -RFv {MODEL}" in check.fix and "ausearch -m AVC" in check.fix


def test_selinux_docker_model_needs_a_container_label() -> None:
    paths = {MODEL: access(MODEL, "model", "system_u:object_r:var_t:s0")}
    check = selinux_check({"selinux": "1"}, paths, docker=True)
    assert check.status == "fail" and "container_t" in check.evidence
    assert f"semanage fcontext -a -t container_ro_file_t '{MODEL}(/.*)?'" in check.fix
    labelled = {MODEL: access(MODEL, "model", "system_u:object_r:container_ro_file_t:s0")}
    assert selinux_check({"selinux": "1"}, labelled, docker=True).status == "ok"


def test_selinux_confined_service_domain_warns() -> None:
    lsm = {"selinux": "1", "confinement": "system_u:system_r:httpd_t:s0"}
    paths = {MODEL: access(MODEL, "model", "system_u:object_r:var_t:s0")}
    check = selinux_check(lsm, paths, docker=False)
    assert check.status == "warn" and "httpd_t" in check.evidence and "semanage" in check.fix
    assert selinux_type("system_u:object_r:var_t:s0") == "var_t" and selinux_type("?") == ""


def test_apparmor_states() -> None:
    assert apparmor_check({}, MODEL, CACHE).status == "ok"
    assert apparmor_check({"apparmor": "N"}, MODEL, CACHE).evidence == "AppArmor not enabled"
    assert apparmor_check({"apparmor": "Y"}, MODEL, CACHE).status == "skip"  # not running
    unconfined = apparmor_check({"apparmor": "Y", "confinement": "unconfined"}, MODEL, CACHE)
    assert unconfined.status == "ok" and "unconfined" in unconfined.evidence
    complain = {"apparmor": "Y", "confinement": "autoglm-serve (complain)"}
    assert apparmor_check(complain, MODEL, CACHE).status == "ok"
    enforce = {"apparmor": "Y", "confinement": "autoglm-serve (enforce)"}
    check = apparmor_check(enforce, MODEL, CACHE)
    assert check.status == "warn" and "autoglm-serve (enforce)" in check.evidence
    assert "aa-complain autoglm-serve" in check.fix and f"{MODEL}/** r" in check.fix
    # LSMs stacked under SELinux: AppArmor's own label is read from attr/apparmor/current
    stacked = {"apparmor": "Y", "selinux": "0", "confinement": "system_u:system_r:x_t:s0",
               "apparmor_label": "autoglm-serve (enforce)"}  # fmt: skip
    assert apparmor_check(stacked, MODEL, CACHE).status == "warn"


def test_parse_records_of_lsm_paths_and_caches() -> None:
    probe = parse_doctor_probe(
        [
            "LS selinux 1",
            "LS confinement system_u:system_r:unconfined_service_t:s0",
            f"PA\tmodel\trx\tsystem_u:object_r:var_t:s0\t/srv\txfs\tro,noexec\t{MODEL}",
            f"PA\tTRITON_CACHE_DIR\t-\t\t\t\t\t{CACHE}/triton",
            f"PU\tfind: '{MODEL}': Permission denied",
            "CS 1700000000",
            f"CE\told\troot\t{CACHE}/vllm/torch_compile_cache/1517964802",
            f"CO\troot\t{CACHE}/vllm/torch_compile_cache",
        ]
    )
    assert probe.lsm["confinement"].endswith("unconfined_service_t:s0")
    model = probe.paths[MODEL]
    assert model.read_only and model.noexec and model.access == "rx" and model.mount == "/srv"
    assert not probe.paths[f"{CACHE}/triton"].exists
    assert probe.model_unreadable == [f"find: '{MODEL}': Permission denied"]
    assert probe.venv_built == 1700000000
    assert probe.cache_entries == [
        CacheEntry(f"{CACHE}/vllm/torch_compile_cache/1517964802", "root", False)
    ]
    assert probe.foreign_owned == [("root", f"{CACHE}/vllm/torch_compile_cache")]


# -- mounts, access, staleness, ownership -------------------------------------------------


def test_cache_mounts_ro_and_noexec() -> None:
    wanted = [CACHE, f"{CACHE}/triton", f"{CACHE}/huggingface"]
    good = {
        p: access(p, r)
        for p, r in zip(wanted, ["home", "TRITON_CACHE_DIR", "HF_HOME"], strict=True)
    }
    assert cache_mount_check(good, wanted).status == "ok"
    assert cache_mount_check({}, wanted).status == "skip"  # no cache directory yet
    hf_noexec = {**good, wanted[2]: access(wanted[2], "HF_HOME", options=("rw", "noexec"))}
    assert cache_mount_check(hf_noexec, wanted).status == "ok"  # only data there
    bad = {**good, wanted[1]: access(wanted[1], "TRITON_CACHE_DIR", options=("ro", "noexec"))}
    check = cache_mount_check(bad, wanted)
    assert check.status == "fail" and "read-only mount" in check.evidence
    assert "noexec mount" in check.evidence and "mount -o remount,rw,exec /data" in check.fix


def test_model_access() -> None:
    there = {"model_exists": True, "user_exists": True}
    assert model_access_check([], MODEL, "autoglm", **there).status == "ok"
    no_dir = model_access_check([], MODEL, "autoglm", model_exists=False, user_exists=True)
    assert no_dir.status == "skip" and "does not exist" in no_dir.evidence
    no_user = model_access_check([], MODEL, "autoglm", model_exists=True, user_exists=False)
    assert no_user.status == "skip" and "no user autoglm" in no_user.evidence
    check = model_access_check(
        [f"{MODEL}/model-00001-of-00004.safetensors"], MODEL, "autoglm", **there
    )
    assert check.status == "fail" and "autoglm cannot read" in check.evidence
    assert f"chmod -R a+rX {MODEL}" in check.fix


def test_stale_caches_against_the_venv_build() -> None:
    assert stale_cache_check(None, []).status == "skip"
    assert stale_cache_check(1, [CacheEntry("/c/new", "autoglm", True)]).status == "ok"
    entries = [CacheEntry("/c/new", "autoglm", True), CacheEntry("/c/old", "autoglm", False)]
    check = stale_cache_check(1, entries)
    assert check.status == "warn" and "/c/old" in check.evidence and "/c/new" not in check.evidence


def test_foreign_owned_cache_files_name_the_topmost_path() -> None:
    wanted = [CACHE, f"{CACHE}/vllm"]
    home = {"home_exists": True}
    assert (
        cache_ownership_check([("root", f"{CACHE}/vllm")], wanted, "autoglm", **home).status == "ok"
    )
    none = cache_ownership_check([], wanted, "autoglm", home_exists=False)
    assert none.status == "skip"
    found = [("root", f"{CACHE}/vllm/torch_compile_cache"),
             ("root", f"{CACHE}/vllm/torch_compile_cache/1")]  # fmt: skip
    check = cache_ownership_check(found, wanted, "autoglm", **home)
    assert check.status == "warn"
    assert check.fix.startswith(f"chown -R autoglm:autoglm {CACHE}/vllm/torch_compile_cache (")


def test_sections_run_in_a_real_shell(tmp_path: Path) -> None:
    """Access, mount and cache sections as the current user: nothing is written."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    secret = model / "shard.safetensors"
    secret.write_text("x")
    secret.chmod(0)
    cache = tmp_path / "cache"
    (cache / "triton" / "old").mkdir(parents=True)
    venv = tmp_path / "venv"
    venv.mkdir()
    os.utime(cache / "triton" / "old", (1, 1))
    (venv / "stamp").write_text("d")
    os.utime(venv / "stamp", (100, 100))  # the venv was built before "new" was written
    (cache / "triton" / "new").mkdir()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    as_me = "env --"  # the current user: runuser needs root
    script = "\n".join(
        [
            paths_section(as_me, [("model", str(model)), ("home", str(cache))]),
            model_access_section(as_me, str(model)),
            cache_entries_section(user, str(venv / "stamp"), [str(cache / "triton")], str(cache)),
        ]
    )
    before = sorted(p.name for p in tmp_path.rglob("*"))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    probe = parse_doctor_probe(out.stdout.splitlines())
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert probe.paths[str(cache)].access == "rwx" and probe.paths[str(cache)].mount
    if os.geteuid() != 0:  # root reads mode-0 files
        assert probe.model_unreadable == [str(secret)], out.stdout
    stale = {Path(e.path).name: e.newer_than_venv for e in probe.cache_entries}
    assert stale == {"old": False, "new": True}
    assert probe.foreign_owned == []


@pytest.mark.parametrize(
    ("user", "prefix"),
    [("autoglm", "runuser -u autoglm --"),
     ("2000:0", "setpriv --reuid=2000 --regid=0 --clear-groups --")],
)  # fmt: skip
def test_as_user_prefix(user: str, prefix: str) -> None:
    assert as_user_prefix(user) == prefix


# -- reachability through a proxy -------------------------------------------------------


def test_rows_behind_a_stopped_proxy_name_the_proxy() -> None:
    proxy = "http://10.0.0.1:3128"
    targets = [("proxy", proxy), ("pip index", "http://mirror/simple"),
               ("model hub", "http://hub.corp/")]  # fmt: skip
    refused = "error [Errno 111] Connection refused"
    found = [Reach(k, u, refused) for k, u in targets]
    checks = {c.name: c for c in reach_checks(targets, found, [".corp"])}
    row = checks["reach proxy"]
    assert row.status == "fail" and f"proxy_url {proxy} does not answer" in row.evidence
    assert f"start the proxy at {proxy}" in row.fix
    index = checks["reach pip index"]
    assert index.status == "fail" and f"through proxy_url {proxy}" in index.evidence
    hub = checks["reach model hub"]  # bypasses the proxy (no_proxy): its own failure
    assert hub.status == "warn" and "through proxy_url" not in hub.evidence
    assert "hub_endpoint" in hub.fix


def test_through_proxy_follows_urllib_no_proxy_rules() -> None:
    assert through_proxy("http://mirror/simple", ["localhost"])
    assert not through_proxy("http://pypi.corp.example/simple", [".corp.example"])
    assert not through_proxy("http://corp.example/", ["corp.example"])
    assert not through_proxy("http://anything/", ["*"])
    assert through_proxy("http://10.1.2.3/", ["10.0.0.0/8"])  # urllib ignores CIDRs


def test_a_refused_proxy_login_fails_the_rows_behind_the_proxy() -> None:
    proxy = "http://10.0.0.1:3128"
    targets = [("proxy", proxy), ("pip index", "http://mirror/simple"),
               ("model hub", "http://hub.corp/")]  # fmt: skip
    found = [Reach("proxy", proxy, "tcp connect"), Reach("pip index", targets[1][1], "http 407"),
             Reach("model hub", targets[2][1], "http 407")]  # fmt: skip
    checks = {c.name: c for c in reach_checks(targets, found, [".corp"])}
    index = checks["reach pip index"]
    assert index.status == "fail" and "refused the host's login (HTTP 407)" in index.evidence
    assert "proxy_username" in index.fix and "deploys/network.py" in index.fix
    assert checks["reach model hub"].status == "ok"  # not through the proxy: its own answer


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Proxy-Authorization", "")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_reach_probe_uses_the_hosts_env_file_login_and_keeps_it_out_of_argv(
    tmp_path: Path,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy = f"http://127.0.0.1:{server.server_address[1]}"
        env_file = tmp_path / "network.env"
        login = proxy.replace("http://", "http://svc:s3cr%40t@")
        env_file.write_text(f"http_proxy={login}\nHTTP_PROXY={login}\nno_proxy=\n")
        target = [("pip index", "http://mirror.invalid/simple/")]
        script = reach_section(target, {"http_proxy": proxy}, env_file=str(env_file))
        assert "s3cr" not in script  # argv of the shell holds no login
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert "NR\tpip index\thttp://mirror.invalid/simple/\thttp 200" in out.stdout, out
    path, auth = _RecordingProxy.seen[-1]
    assert path == "http://mirror.invalid/simple/"
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == "svc:s3cr@t"


# -- the model download: one redirect deep -------------------------------------------------


def _probe(targets: list[tuple[str, str]]) -> list[Reach]:
    script = reach_section(targets, {}, env_file="/nonexistent")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    return [Reach(*line.split("\t")[1:4]) for line in out.stdout.splitlines()]


def test_the_download_probe_follows_the_hubs_redirect_to_its_cdn(tmp_path: Path) -> None:
    repo = "test-org/Tiny-Model"
    source = make_test_repo(tmp_path / "src", shards=1, shard_size=2**20)
    with HubStandin(tmp_path / "hub") as hub:
        hub.publish(repo, source)
        lock = fetch_lock("huggingface", hub.url, repo, "main")
        biggest = max(lock.files, key=lambda f: f.size)
        targets = [
            ("model hub", hub.url),
            ("model download", download_url(lock, hub.url, biggest.path)),
        ]
        found = _probe(targets)
        cdn = hub.cdn_url
        ok = {c.name: c for c in reach_checks(targets, found)}["reach model download"]
        assert ok.status == "ok" and "sends downloads to 127.0.0.1: http 206" in ok.evidence
        assert any(r.result == f"http 302 -> {cdn}: http 206" for r in found), found
        hub.cdn.shutdown()  # the CDN behind a firewall: its port no longer answers
        hub.cdn.server_close()
        found = _probe(targets)
    checks = {c.name: c for c in reach_checks(targets, found)}
    assert checks["reach model hub"].status == "ok"
    row = checks["reach model download"]
    assert row.status == "warn" and "which this host cannot reach" in row.evidence
    assert "Connection refused" in row.evidence and "allow 127.0.0.1" in row.fix


def test_a_mirror_sending_downloads_to_the_hf_cdn_is_named() -> None:
    url = "https://hf-mirror.com/o/n/resolve/" + "a" * 40 + "/model.safetensors"
    targets = [("model download", url)]
    blocked = "http 302 -> https://cas-bridge.xethub.hf.co: error timed out"
    row = reach_checks(targets, [Reach("model download", url, blocked)])[0]
    assert row.evidence == (
        "hf-mirror.com sends downloads to cas-bridge.xethub.hf.co (Hugging Face's CDN: the "
        "mirror does not serve the files itself) (http 302), which this host cannot reach: "
        "timed out"
    )
    fine = "http 302 -> https://cas-bridge.xethub.hf.co: http 206"
    row = reach_checks(targets, [Reach("model download", url, fine)])[0]
    assert row.status == "ok" and "Hugging Face's CDN" in row.evidence
    hf = url.replace("hf-mirror.com", "huggingface.co")
    row = reach_checks([("model download", hf)], [Reach("model download", hf, fine)])[0]
    assert row.status == "ok" and "Hugging Face's CDN" not in row.evidence


def test_docker_mode_reads_the_containers_process_not_the_docker_client(tmp_path: Path) -> None:
    """The unit's main process in Docker mode is `docker run`; the server is the container's
    process, whose PID `docker inspect` gives."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text('#!/bin/sh\n[ "$4" = autoglm ] && echo 4242\n')
    (bindir / "docker").chmod(0o755)
    proc = tmp_path / "proc/4242/attr/apparmor"
    proc.mkdir(parents=True)
    (proc / "current").write_text("docker-default (enforce)\n")
    (tmp_path / "proc/4242/attr/current").write_text("docker-default (enforce)\n")
    (tmp_path / "sys/module/apparmor/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/apparmor/parameters/enabled").write_text("Y\n")
    script = lsm_section("autoglm-docker.service", root=str(tmp_path), container="autoglm")
    out = subprocess.run(["sh", "-c", f"PATH={bindir}:$PATH; {script}"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    lsm = parse_doctor_probe(out.stdout.splitlines()).lsm
    assert lsm["apparmor_label"] == "docker-default (enforce)", out
    check = apparmor_check(lsm, MODEL, CACHE, docker=True)
    assert check.status == "ok" and "docker-default (enforce)" in check.evidence


def test_docker_mode_unconfined_container_on_an_apparmor_kernel_warns_with_the_fix() -> None:
    unconfined = {"apparmor": "Y", "apparmor_label": "unconfined"}
    check = apparmor_check(unconfined, MODEL, CACHE, docker=True)
    assert check.status == "warn" and "runs unconfined" in check.evidence
    assert "apt-get install apparmor && systemctl restart docker" in check.fix
    # venv mode: an unconfined service is the normal case
    assert apparmor_check(unconfined, MODEL, CACHE).status == "ok"
    assert apparmor_check({"apparmor": "Y"}, MODEL, CACHE, docker=True).status == "skip"
