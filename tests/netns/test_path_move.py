"""One QUIC connection per peer moves between the relay and a punched direct path, mid-transfer.

Both tests cut or open the direct path between the two NATs with iptables (FORWARD drops on each NAT
router for packets from the other's public address), so the relay stays reachable throughout.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lab import Lab
from nodes import LabNode, sha1_of, start_peer, start_relay, wait_until, write_random_file

CHANNEL = "paths"
LOAD_MB = int(os.environ.get("KACHERY_P2P_PATH_TEST_MB", "48"))


def block_direct(lab: Lab, a: LabNode, b: LabNode, blocked: bool) -> None:
    for here, there in ((a, b), (b, a)):
        assert here.host.router_ns is not None
        lab._ipt(here.host.router_ns, "-I" if blocked else "-D", "FORWARD", "-s", there.host.public_ip, "-j", "DROP")


def start_pair(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LabNode, LabNode, str]:
    monkeypatch.setenv("KACHERY_P2P_RETRY_DIRECT_SEC", "2")  # punch again soon after the path opens
    relay_host = lab.add_public_host("relay")
    host_a, host_b = lab.add_natted_host("a", "port-restricted"), lab.add_natted_host("b", "port-restricted")
    start_relay(lab, relay_host, tmp_path / "relay")
    a = start_peer(lab, host_a, tmp_path / "a", "a", relay_host)
    b = start_peer(lab, host_b, tmp_path / "b", "b", relay_host)
    return a, b, a.info()["nodeId"]


def load_in_background(b: LabNode, uri: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = b.cli("load", uri, "--timeout", "300", timeout=600, check=False)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def received(peer: dict[str, Any], kind: str) -> int:
    return int(peer.get("bytesByPath", {}).get(kind, {}).get("received", 0))


def test_a_load_that_starts_relayed_finishes_direct_on_the_same_connection(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, a_id = start_pair(lab, tmp_path, monkeypatch)
    block_direct(lab, a, b, True)
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    wait_until("a relayed connection", lambda: (b.peer(a_id) or {}).get("path") == "relayed", 60)
    source = tmp_path / "payload.bin"
    digest = write_random_file(source, LOAD_MB * 1024 * 1024)
    uri = a.cli("store", str(source)).stdout.strip()
    started = time.monotonic()
    thread, outcome = load_in_background(b, uri)
    wait_until("bytes over the relay", lambda: received(b.peer(a_id) or {}, "relayed") > 2 << 20, 60)
    block_direct(lab, a, b, False)
    wait_until("the connection to move direct", lambda: (b.peer(a_id) or {}).get("path") == "direct", 60)
    thread.join(600)
    elapsed = time.monotonic() - started
    result = outcome["result"]
    assert result.returncode == 0, result.stderr
    assert sha1_of(result.stdout.strip()) == digest
    peers = [p for p in b.peers() if p["nodeId"] == a_id]
    assert len(peers) == 1  # one connection, not a second direct one
    peer = peers[0]
    direct, relayed = received(peer, "direct"), received(peer, "relayed")
    print(f"\n{LOAD_MB} MB relayed->direct in {elapsed:.1f} s: {direct / 1e6:.1f} MB direct, "
          f"{relayed / 1e6:.1f} MB relayed ({peer['bytesByPath']})")
    assert direct > relayed
    assert "moved to the direct path" in b.log() + a.log()
    assert "Traceback" not in a.log() + b.log()


def test_a_direct_path_cut_mid_transfer_finishes_over_the_relay(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, a_id = start_pair(lab, tmp_path, monkeypatch)
    block_direct(lab, a, b, True)  # start relayed, so the connection knows its relay
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    wait_until("a relayed connection", lambda: (b.peer(a_id) or {}).get("path") == "relayed", 60)
    block_direct(lab, a, b, False)
    wait_until("the connection to move direct", lambda: (b.peer(a_id) or {}).get("path") == "direct", 60)
    source = tmp_path / "payload.bin"
    digest = write_random_file(source, LOAD_MB * 1024 * 1024)
    uri = a.cli("store", str(source)).stdout.strip()
    thread, outcome = load_in_background(b, uri)
    wait_until("bytes on the direct path", lambda: received(b.peer(a_id) or {}, "direct") > 4 << 20, 60)
    block_direct(lab, a, b, True)
    thread.join(600)
    result = outcome["result"]
    assert result.returncode == 0, result.stderr
    assert sha1_of(result.stdout.strip()) == digest
    peer = b.peer(a_id) or {}
    assert peer.get("path") == "relayed" and received(peer, "relayed") > 1 << 20, peer
    print(f"\ncut mid-transfer: {peer['bytesByPath']}")
