"""Hosts with several addresses: a relay reached at a second address of its interface (a floating or failover
IP) must answer from that address, or the nodes' NATs drop its answers as coming from a stranger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab import Lab
from nodes import RELAY_PORT, LabNode, sha1_of, start_node, start_relay, wait_until, write_random_file

CHANNEL = "multi-address"


def _peer(node: LabNode, other_id: str) -> dict[str, Any] | None:
    peer = node.peer(other_id)
    return peer if peer is not None and CHANNEL in peer["channels"] else None


def test_relay_on_a_secondary_address_registers_natted_nodes_which_go_direct(lab: Lab, tmp_path: Path) -> None:
    relay_host = lab.add_public_host("relay")
    second = lab.add_address(relay_host)
    host_a = lab.add_natted_host("a", "port-restricted")
    host_b = lab.add_natted_host("b", "port-restricted")
    relay = start_relay(lab, relay_host, tmp_path / "relay")
    nodes = [
        start_node(lab, host, tmp_path / name, name, "--port", "14507", "--bootstrap", f"{second}:{RELAY_PORT}")
        for host, name in ((host_a, "a"), (host_b, "b"))
    ]
    relay_id = relay.info()["nodeId"]
    for node in nodes:
        wait_until(f"{node.host.name} registered with the relay", lambda n=node: n.peer(relay_id), 30)
        node.cli("join-channel", CHANNEL)
    a, b = nodes
    a_id, b_id = a.info()["nodeId"], b.info()["nodeId"]
    wait_until("a direct path on b's side", lambda: (_peer(b, a_id) or {}).get("path") == "direct", 60)
    wait_until("a direct path on a's side", lambda: (_peer(a, b_id) or {}).get("path") == "direct", 30)
    digest = write_random_file(tmp_path / "f.bin", 1024 * 1024 + 5)
    uri = a.cli("store", str(tmp_path / "f.bin")).stdout.strip()
    assert sha1_of(b.cli("load", uri, "--timeout", "30").stdout.strip()) == digest
    for node in (relay, a, b):
        assert node.alive() and "Traceback" not in node.log()
