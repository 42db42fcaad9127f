"""Air-gapped sandbox hosts: the iptables rules that cut them off, and the host record."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from autoglm_testbed.hosts import HostSpec, Sandbox, _HostRecord, air_gap_rules

SUBNET, GATEWAY, HOST = "10.231.21.0/24", "10.231.21.1", "10.231.21.11"


def test_forwarded_traffic_leaving_the_subnet_is_rejected_tcp_with_a_reset_first() -> None:
    forward = [rule for chain, rule in air_gap_rules(HOST, SUBNET, GATEWAY) if chain == "FORWARD"]
    assert forward == [
        ["-s", HOST, "!", "-d", SUBNET, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-s", HOST, "!", "-d", SUBNET, "-j", "REJECT", "--reject-with", "icmp-net-unreachable"],
    ]


def test_the_controller_is_reachable_on_the_bridge_address_only() -> None:
    local = [rule for chain, rule in air_gap_rules(HOST, SUBNET, GATEWAY) if chain == "INPUT"]
    assert [rule[:5] for rule in local] == [["-s", HOST, "!", "-d", GATEWAY]] * 2
    assert all(rule[-3:-1] == ["REJECT", "--reject-with"] for rule in local)


def test_no_rule_drops_silently_or_accepts() -> None:
    # DROP would make clients hang until their timeouts; ACCEPT would open a hole
    for _chain, rule in air_gap_rules(HOST, SUBNET, GATEWAY):
        assert rule[rule.index("-j") + 1] == "REJECT"


def test_host_spec_defaults_to_a_connected_host() -> None:
    assert HostSpec().air_gapped is False
    assert HostSpec(air_gapped=True).air_gapped is True


def test_state_written_before_the_flag_existed_still_loads(tmp_path: Path) -> None:
    sandbox = Sandbox("unit", 21, tmp_path / "state")
    record = _HostRecord(1, "unit-1", HOST, False, "ag-unit-1", "ag-unit-1", "/x", air_gapped=True)
    old = {k: v for k, v in asdict(record).items() if k != "air_gapped"}
    sandbox._state_file.parent.mkdir(parents=True)
    sandbox._state_file.write_text(json.dumps({"hosts": [old]}))
    assert [r.air_gapped for r in sandbox._load_state_records()] == [False]
    sandbox._save_state([record])
    assert [r.air_gapped for r in sandbox._load_state_records()] == [True]


def test_host_rules_are_tagged_per_host_under_the_sandbox_tag(tmp_path: Path) -> None:
    sandbox = Sandbox("unit", 21, tmp_path / "state")
    tag = sandbox._host_comment("unit-1")
    assert tag == "autoglm-sandbox:unit:unit-1" and tag.startswith(sandbox.comment + ":")
    # another sandbox whose name extends ours does not share the prefix
    assert not Sandbox("unit2", 22, tmp_path / "s2").comment.startswith(sandbox.comment + ":")
