"""Behind real NATs: packet loss, a relay restarted mid-session, and a node that moves to a new address."""

from __future__ import annotations

import signal
from pathlib import Path

from lab import Host, Lab
from nodes import LabNode, sha1_of, start_peer, start_relay, wait_until, write_random_file

CHANNEL = "resilience"


def two_nodes(lab: Lab, tmp_path: Path, nat: str) -> tuple[LabNode, LabNode, LabNode, Host]:
    """A relay and nodes a and b behind NATs of one type, sharing a channel; returns a's host too."""
    relay_host = lab.add_public_host("relay")
    host_a, host_b = lab.add_natted_host("a", nat), lab.add_natted_host("b", nat)
    relay = start_relay(lab, relay_host, tmp_path / "relay")
    a = start_peer(lab, host_a, tmp_path / "a", "a", relay_host)
    b = start_peer(lab, host_b, tmp_path / "b", "b", relay_host)
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    return relay, a, b, host_a


def test_load_completes_with_five_percent_loss_on_one_side(lab: Lab, tmp_path: Path) -> None:
    _relay, a, b, _host_a = two_nodes(lab, tmp_path, "port-restricted")
    a_id = a.info()["nodeId"]
    wait_until("a direct path", lambda: (b.peer(a_id) or {}).get("path") == "direct", 60)
    lab.set_loss(b.host, 0.05)
    source = tmp_path / "payload.bin"
    digest = write_random_file(source, 4 * 1024 * 1024)
    uri = a.cli("store", str(source)).stdout.strip()
    assert sha1_of(b.cli("load", uri, "--timeout", "30").stdout.strip()) == digest


def test_relay_restart_mid_session(lab: Lab, tmp_path: Path) -> None:
    relay, a, b, _host_a = two_nodes(lab, tmp_path, "symmetric")
    relay_host = relay.host
    a_id = a.info()["nodeId"]
    wait_until("a relayed path", lambda: (b.peer(a_id) or {}).get("path") == "relayed", 60)
    first = tmp_path / "first.bin"
    write_random_file(first, 256 * 1024)
    assert b.cli("load", a.cli("store", str(first)).stdout.strip(), "--timeout", "20").returncode == 0

    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(15) == 0
    relay = start_relay(lab, relay_host, tmp_path / "relay")  # same key, same address
    wait_until("both nodes to register again", lambda: relay.info().get("relay", {}).get("registered") == 2, 60)
    wait_until("a relayed path again", lambda: (b.peer(a_id) or {}).get("path") == "relayed", 60)
    second = tmp_path / "second.bin"
    digest = write_random_file(second, 1024 * 1024)
    uri = a.cli("store", str(second)).stdout.strip()
    assert sha1_of(b.cli("load", uri, "--timeout", "30").stdout.strip()) == digest
    for node in (relay, a, b):
        assert node.alive()
        assert "Traceback" not in node.log()


def test_node_that_moves_to_a_new_address(lab: Lab, tmp_path: Path) -> None:
    _relay, a, b, host_a = two_nodes(lab, tmp_path, "port-restricted")
    a_id = a.info()["nodeId"]
    wait_until("a direct path", lambda: (b.peer(a_id) or {}).get("path") == "direct", 60)
    old_public = host_a.public_ip
    new_public = lab.move_host(host_a)
    assert new_public != old_public
    # The old paths die with the old address; a re-registers with the relay from its new address and
    # b reaches it there again.
    def reconnected() -> bool:
        peer = b.peer(a_id) or {}
        # Direct to the new address, or through the relay (which then knows the new address).
        return new_public in str(peer.get("address", "")) or peer.get("path") == "relayed"

    wait_until("b to reach a again after the move", reconnected, 120, interval=1.0)
    source = tmp_path / "payload.bin"
    digest = write_random_file(source, 1024 * 1024)
    uri = a.cli("store", str(source)).stdout.strip()
    assert sha1_of(b.cli("load", uri, "--timeout", "30").stdout.strip()) == digest
