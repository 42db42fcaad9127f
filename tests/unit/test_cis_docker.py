"""CIS Docker section 5 checks over `docker inspect` documents: one passing and one failing
document per check, and the hardened container as docker_args builds it passes them all."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from autoglm_testbed.cis_docker import CHECKS, evaluate, format_findings, warnings

INFO_OK = {"Swarm": {"LocalNodeState": "inactive"}}


def hardened() -> dict[str, Any]:
    """Shaped like `docker inspect autoglm` of the converged sandbox container."""
    return {
        "Id": "c0ffee",
        "AppArmorProfile": "docker-default",
        "Config": {
            "Image": "vllm/vllm-openai:v0.12.0@sha256:" + "a" * 64,
            "Env": ["VLLM_API_KEY=sk-secret"],
        },
        "State": {"Status": "running", "Health": {"Status": "healthy"}},
        "HostConfig": {
            "Privileged": False,
            "CapAdd": None,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "ReadonlyRootfs": True,
            "Memory": 268435456,
            "NanoCpus": 1000000000,
            "CpuShares": 0,
            "PidsLimit": 256,
            "NetworkMode": "bridge",
            "PidMode": "",
            "IpcMode": "private",
            "UTSMode": "",
            "UsernsMode": "",
            "CgroupParent": "",
            "Devices": [],
            "DeviceRequests": [{"Driver": "", "Count": 0, "DeviceIDs": ["0"]}],
            "Ulimits": None,
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "PortBindings": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]},
        },
        "Mounts": [
            {"Type": "volume", "Source": "/var/lib/docker/volumes/autoglm-cache/_data",
             "Destination": "/home/vllm/.cache", "RW": True, "Propagation": ""},
            {"Type": "bind", "Source": "/srv/autoglm/models/AutoGLM-Phone-9B",
             "Destination": "/models/autoglm", "RW": False, "Propagation": "rprivate"},
        ],
        "NetworkSettings": {
            "Ports": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}]},
            "Networks": {"autoglm": {}},
        },
    }  # fmt: skip


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out


def result(doc: dict[str, Any], check_id: str, **kw: Any) -> tuple[str, str]:
    (finding,) = [f for f in evaluate(doc, **kw) if f.id == check_id]
    return finding.result, finding.evidence


def test_hardened_container_has_no_warning_and_ids_are_complete() -> None:
    findings = evaluate(hardened(), info=INFO_OK, processes=["/bin/httpd -f -p 8000"])
    assert [f.id for f in findings] == [f"5.{n}" for n in range(1, 33)]
    assert warnings(findings) == [], format_findings(findings)
    assert len({c[1] for c in CHECKS}) == 32  # old IDs unique too
    assert "sk-secret" not in format_findings(findings)


# (check id, path, failing value, expected result on the failing document)
FAILING = [
    ("5.2", "AppArmorProfile", "unconfined", "WARN"),
    ("5.2", "AppArmorProfile", "", "WARN"),
    ("5.3", "HostConfig.SecurityOpt", [], "WARN"),
    ("5.4", "HostConfig.CapAdd", ["SYS_ADMIN"], "WARN"),
    ("5.4", "HostConfig.CapAdd", ["cap_sys_nice"], "WARN"),
    ("5.5", "HostConfig.Privileged", True, "WARN"),
    ("5.6", "Mounts", [{"Source": "/etc", "Destination": "/host-etc", "RW": True}], "WARN"),
    ("5.8", "NetworkSettings.Ports", {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "80"}]},
     "WARN"),
    ("5.10", "HostConfig.NetworkMode", "host", "WARN"),
    ("5.11", "HostConfig.Memory", 0, "WARN"),
    ("5.12", "HostConfig.NanoCpus", 0, "WARN"),
    ("5.13", "HostConfig.ReadonlyRootfs", False, "WARN"),
    ("5.14", "NetworkSettings.Ports", {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]},
     "WARN"),
    ("5.14", "NetworkSettings.Ports", {"8000/tcp": [{"HostIp": "::", "HostPort": "8000"}]},
     "WARN"),
    ("5.15", "HostConfig.RestartPolicy", {"Name": "on-failure", "MaximumRetryCount": 10},
     "WARN"),
    ("5.16", "HostConfig.PidMode", "host", "WARN"),
    ("5.17", "HostConfig.IpcMode", "host", "WARN"),
    ("5.18", "HostConfig.Devices", [{"PathOnHost": "/dev/nvidia0"}], "INFO"),
    ("5.20", "Mounts", [{"Source": "/srv/x", "Destination": "/x", "RW": False,
                         "Propagation": "rshared"}], "WARN"),
    ("5.21", "HostConfig.UTSMode", "host", "WARN"),
    ("5.22", "HostConfig.SecurityOpt", ["no-new-privileges:true", "seccomp=unconfined"],
     "WARN"),
    ("5.25", "HostConfig.CgroupParent", "/custom", "WARN"),
    ("5.26", "HostConfig.SecurityOpt", ["label=disable"], "WARN"),
    ("5.26", "HostConfig.SecurityOpt", ["no-new-privileges:false"], "WARN"),
    ("5.27", "State", {"Status": "running"}, "WARN"),
    ("5.29", "HostConfig.PidsLimit", None, "WARN"),
    ("5.29", "HostConfig.PidsLimit", -1, "WARN"),
    ("5.30", "NetworkSettings.Networks", {"bridge": {}}, "INFO"),
    ("5.31", "HostConfig.UsernsMode", "host", "WARN"),
    ("5.32", "Mounts", [{"Source": "/var/run/docker.sock",
                         "Destination": "/var/run/docker.sock", "RW": False}], "WARN"),
]  # fmt: skip


@pytest.mark.parametrize(("check_id", "path", "value", "expected"), FAILING)
def test_each_check_passes_the_hardened_and_flags_the_broken_document(
    check_id: str, path: str, value: Any, expected: str
) -> None:
    assert result(hardened(), check_id, info=INFO_OK)[0] == "PASS"
    got, evidence = result(set_path(hardened(), path, value), check_id, info=INFO_OK)
    assert got == expected, evidence


def test_swarm_mode_reads_docker_info() -> None:
    assert result(hardened(), "5.1", info=INFO_OK)[0] == "PASS"
    active = {"Swarm": {"LocalNodeState": "active"}}
    assert result(hardened(), "5.1", info=active) == ("WARN", "swarm active")
    assert result(hardened(), "5.1")[0] == "INFO"  # not read: not evaluated, not passed


def test_sshd_reads_the_process_list() -> None:
    assert result(hardened(), "5.7", processes=["/bin/httpd"])[0] == "PASS"
    assert result(hardened(), "5.7", processes=["/usr/sbin/sshd -D"])[0] == "WARN"
    assert result(hardened(), "5.7")[0] == "INFO"


def test_default_capabilities_added_back_are_not_a_finding() -> None:
    doc = set_path(hardened(), "HostConfig.CapAdd", ["CAP_CHOWN", "net_bind_service"])
    assert result(doc, "5.4")[0] == "PASS"


def test_cpu_shares_alone_pass_cpu_priority() -> None:
    doc = set_path(set_path(hardened(), "HostConfig.NanoCpus", 0), "HostConfig.CpuShares", 512)
    assert result(doc, "5.12")[0] == "PASS"


def test_daemon_no_new_privileges_passes_unless_the_container_turns_it_off() -> None:
    doc = set_path(hardened(), "HostConfig.SecurityOpt", ["label=disable"])
    assert result(doc, "5.26", daemon_no_new_privileges=True)[0] == "PASS"
    off = set_path(hardened(), "HostConfig.SecurityOpt", ["no-new-privileges=false"])
    assert result(off, "5.26", daemon_no_new_privileges=True)[0] == "WARN"


def test_restart_policy_up_to_five_and_always_pass() -> None:
    for policy in ({"Name": "on-failure", "MaximumRetryCount": 5},
                   {"Name": "always", "MaximumRetryCount": 0}):  # fmt: skip
        assert result(set_path(hardened(), "HostConfig.RestartPolicy", policy), "5.15")[0] == "PASS"


def test_stopped_container_falls_back_to_requested_port_bindings() -> None:
    doc = set_path(hardened(), "NetworkSettings", {})
    doc = set_path(
        doc, "HostConfig.PortBindings", {"8000/tcp": [{"HostIp": "", "HostPort": "8000"}]}
    )
    assert result(doc, "5.14")[0] == "WARN"


def test_read_only_sensitive_mount_and_manual_checks() -> None:
    ro_etc = set_path(hardened(), "Mounts", [{"Source": "/etc", "Destination": "/e", "RW": False}])
    assert result(ro_etc, "5.6")[0] == "PASS"
    assert result(hardened(), "5.9") == ("NOTE", "published: ['127.0.0.1:8000'] (review by hand)")
    assert result(hardened(), "5.19")[0] == "INFO"
    assert result(hardened(), "5.23")[0] == "NOTE" and result(hardened(), "5.24")[0] == "NOTE"
    assert "pinned by digest" in result(hardened(), "5.28")[1]
    floating = set_path(hardened(), "Config.Image", "vllm/vllm-openai:latest")
    assert "NOT pinned" in result(floating, "5.28")[1]


def test_vllm_docs_style_container_fails_the_documented_checks() -> None:
    """`docker run -p 8000:8000 --ipc=host` with no limits: the hardening reference's list."""
    doc = hardened()
    hc = doc["HostConfig"]
    hc.update(Memory=0, NanoCpus=0, CpuShares=0, ReadonlyRootfs=False, IpcMode="host",
              PidsLimit=None, SecurityOpt=None)  # fmt: skip
    doc["NetworkSettings"]["Ports"] = {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}
    del doc["State"]["Health"]
    ids = {f.id for f in warnings(evaluate(doc, info=INFO_OK))}
    assert ids == {"5.3", "5.11", "5.12", "5.13", "5.14", "5.17", "5.26", "5.27", "5.29"}
