"""IPv6 where people have it: global addresses behind stateful firewalls (lab6.py), next to IPv4 NATs.

Two nodes behind symmetric IPv4 NATs cannot punch over IPv4 (test_nat_matrix.py), but with global IPv6 behind
stateful firewalls they reach each other directly over IPv6 (the firewalls open on the simultaneous punch). An
IPv6-only node and an IPv4-only node meet through a dual-stack relay and stay relayed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab import Lab
from lab6 import add_ipv6, remove_ipv4
from nodes import RELAY_PORT, LabNode, sha1_of, start_node, start_relay, wait_until, write_random_file

CHANNEL = "ipv6"


def _peer(node: LabNode, other_id: str) -> dict[str, Any] | None:
    peer = node.peer(other_id)
    return peer if peer is not None and CHANNEL in peer["channels"] else None


def _load_both_ways(a: LabNode, b: LabNode, tmp_path: Path) -> None:
    for source, dest, name in ((a, b, "ab.bin"), (b, a, "ba.bin")):
        digest = write_random_file(tmp_path / name, 1024 * 1024 + 11)
        uri = source.cli("store", str(tmp_path / name)).stdout.strip()
        assert sha1_of(dest.cli("load", uri, "--timeout", "30").stdout.strip()) == digest


def test_symmetric_nats_with_ipv6_behind_stateful_firewalls_go_direct_over_ipv6(lab: Lab, tmp_path: Path) -> None:
    relay_host = lab.add_public_host("relay")
    host_a, host_b = lab.add_natted_host("a", "symmetric"), lab.add_natted_host("b", "symmetric")
    for host in (relay_host, host_a, host_b):
        add_ipv6(lab, host)
    relay = start_relay(lab, relay_host, tmp_path / "relay")
    a, b = (start_node(lab, host, tmp_path / name, name, "--port", "14507", "--bootstrap",
                       f"{relay_host.ip}:{RELAY_PORT}") for host, name in ((host_a, "a"), (host_b, "b")))
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    a_id, b_id = a.info()["nodeId"], b.info()["nodeId"]
    on_b = wait_until("a direct path on b's side", lambda: (_peer(b, a_id) or {}).get("path") == "direct"
                      and _peer(b, a_id), 60)
    on_a = wait_until("a direct path on a's side", lambda: (_peer(a, b_id) or {}).get("path") == "direct"
                      and _peer(a, b_id), 30)
    print(f"\nIPv6: b reaches a at {on_b.get('address')}, a reaches b at {on_a.get('address')}")
    assert on_b["address"].startswith("[2001:db8:1::2]") and on_a["address"].startswith("[2001:db8:2::2]")
    _load_both_ways(a, b, tmp_path)
    for node in (relay, a, b):
        assert node.alive() and "Traceback" not in node.log()


def test_ipv6_only_and_ipv4_only_nodes_meet_through_a_dual_stack_relay(lab: Lab, tmp_path: Path) -> None:
    relay_host = lab.add_public_host("relay")
    host6, host4 = lab.add_natted_host("six", "port-restricted"), lab.add_natted_host("four", "port-restricted")
    relay_v6 = add_ipv6(lab, relay_host)
    add_ipv6(lab, host6)
    remove_ipv4(lab, host6)
    relay = start_relay(lab, relay_host, tmp_path / "relay")
    six = start_node(lab, host6, tmp_path / "six", "six", "--port", "14507", "--bootstrap",
                     f"[{relay_v6}]:{RELAY_PORT}")
    four = start_node(lab, host4, tmp_path / "four", "four", "--port", "14507", "--bootstrap",
                      f"{relay_host.ip}:{RELAY_PORT}")
    for node in (six, four):
        node.cli("join-channel", CHANNEL)
    six_id, four_id = six.info()["nodeId"], four.info()["nodeId"]
    wait_until("four to see six", lambda: _peer(four, six_id), 60)
    wait_until("six to see four", lambda: _peer(six, four_id), 30)
    assert (_peer(four, six_id) or {}).get("path") == "relayed"
    _load_both_ways(six, four, tmp_path)
    for node in (relay, six, four):
        assert node.alive() and "Traceback" not in node.log()
