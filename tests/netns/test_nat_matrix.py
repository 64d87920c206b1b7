"""Two nodes behind real NATs (network namespaces) share a channel and load a file through a relay.

The reported path is direct wherever hole punching can work and relayed where it cannot
(symmetric NAT facing a port-restricted or symmetric NAT). Results are printed as a matrix line. Each node has
one relay here, so it cannot tell its mapping behaviour and birthday probing is not tried (test_birthday_probing.py
gives the nodes two relays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lab import Lab
from nodes import LabNode, sha1_of, start_peer, start_relay, wait_until, write_random_file

CHANNEL = "nat-matrix"
MATRIX = [
    ("port-restricted", "port-restricted", "direct"),
    ("port-restricted", "full-cone", "direct"),
    ("full-cone", "full-cone", "direct"),
    ("full-cone", "symmetric", "direct"),
    ("port-restricted", "symmetric", "relayed"),
    ("symmetric", "symmetric", "relayed"),
]


def _connected(node: LabNode, other_id: str) -> dict[str, Any] | None:
    peer = node.peer(other_id)
    return peer if peer is not None and CHANNEL in peer["channels"] else None


def _settled(node: LabNode) -> bool:
    """No connection attempt in progress (a punch either worked or gave up)."""
    return not node.info().get("connecting")


def setup_pair(lab: Lab, tmp_path: Path, nat_a: str, nat_b: str) -> tuple[LabNode, LabNode, LabNode]:
    relay_host = lab.add_public_host("relay")
    host_a = lab.add_natted_host("a", nat_a)
    host_b = lab.add_natted_host("b", nat_b)
    relay = start_relay(lab, relay_host, tmp_path / "relay")
    a = start_peer(lab, host_a, tmp_path / "a", "a", relay_host)
    b = start_peer(lab, host_b, tmp_path / "b", "b", relay_host)
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    return relay, a, b


@pytest.mark.parametrize(("nat_a", "nat_b", "expected"), MATRIX, ids=[f"{a}-{b}" for a, b, _ in MATRIX])
def test_nat_pair_connects_and_loads(lab: Lab, tmp_path: Path, nat_a: str, nat_b: str, expected: str) -> None:
    relay, a, b = setup_pair(lab, tmp_path, nat_a, nat_b)
    a_id, b_id = a.info()["nodeId"], b.info()["nodeId"]
    wait_until("b to see a in the channel", lambda: _connected(b, a_id), 60)
    if expected == "direct":
        wait_until("a direct path", lambda: (_connected(b, a_id) or {}).get("path") == "direct", 30)
    else:
        wait_until("the punch attempt to end", lambda: _settled(a) and _settled(b), 30)
    path_b = (_connected(b, a_id) or {}).get("path")
    path_a = (_connected(a, b_id) or {}).get("path")
    print(f"\nNAT matrix: {nat_a} x {nat_b}: b sees {path_b}, a sees {path_a} (expected {expected})")
    assert path_b == expected
    source = tmp_path / "payload.bin"
    digest = write_random_file(source, 3 * 1024 * 1024 + 17)
    uri = a.cli("store", str(source)).stdout.strip()
    loaded = b.cli("load", uri, "--timeout", "20").stdout.strip()
    assert sha1_of(loaded) == digest
    for node in (relay, a, b):
        assert node.alive(), node.log()[-2000:]
        assert "Traceback" not in node.log()
