"""A node whose network drops all UDP (hospitals, companies) still shares: it reaches the relay over TLS/TCP on
the relay's port, its peers reach it relayed, and when UDP comes back it returns to UDP without a failed load."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from lab import Host, Lab
from nodes import RELAY_PORT, LabNode, sha1_of, start_peer, start_relay, wait_until, write_random_file

CHANNEL = "tcp"
BLOCK = ["FORWARD", "-i", "lan", "-p", "udp", "-j", "DROP"]


def _udp(lab: Lab, host: Host, blocked: bool) -> None:
    subprocess.run(["ip", "netns", "exec", host.router_ns or "", lab.iptables, "-w", "-I" if blocked else "-D",
                    *BLOCK], check=True)


def _peer(node: LabNode, other_id: str) -> dict[str, Any] | None:
    peer = node.peer(other_id)
    return peer if peer is not None and CHANNEL in peer["channels"] else None


def _transport(node: LabNode) -> str | None:
    transports = node.info().get("relayTransports") or []
    return transports[0]["transport"] if transports else None


def _timed_load(dest: LabNode, source: LabNode, tmp_path: Path, name: str, size: int) -> tuple[str, str, float]:
    digest = write_random_file(tmp_path / name, size)
    uri = source.cli("store", str(tmp_path / name)).stdout.strip()
    started = time.monotonic()
    path = dest.cli("load", uri, "--timeout", "120").stdout.strip()
    return sha1_of(path), digest, time.monotonic() - started


def test_udp_blocked_node_relays_over_tcp_and_returns_to_udp(lab: Lab, tmp_path: Path) -> None:
    relay_host = lab.add_public_host("relay")
    host_a, host_b = lab.add_natted_host("a", "port-restricted"), lab.add_natted_host("b", "port-restricted")
    _udp(lab, host_a, blocked=True)
    relay = start_relay(lab, relay_host, tmp_path / "relay")
    a = start_peer(lab, host_a, tmp_path / "a", "a", relay_host)
    b = start_peer(lab, host_b, tmp_path / "b", "b", relay_host)
    wait_until("a to reach the relay over TCP", lambda: _transport(a) == "tcp", 30)
    check = a.cli("nat-check", "--server", f"{relay_host.ip}:{RELAY_PORT}", "--no-rfc3489", "--timeout", "1",
                  check=False)
    assert check.returncode == 1 and "UDP: no STUN server answered" in check.stdout, check.stdout + check.stderr
    assert "over TLS/TCP (no UDP answer from the relay for" in check.stdout, check.stdout
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    a_id, b_id = a.info()["nodeId"], b.info()["nodeId"]
    wait_until("b to see a", lambda: _peer(b, a_id), 60)
    wait_until("a to see b", lambda: _peer(a, b_id), 30)
    assert (_peer(b, a_id) or {}).get("path") == "relayed"
    assert (_peer(a, b_id) or {}).get("transport") == "tcp" and (_peer(b, a_id) or {}).get("transport") == "udp"
    assert "no UDP answer" in a.info()["relayTransports"][0]["why"]
    size = 8 * 1024 * 1024
    for dest, source, name in ((b, a, "ab.bin"), (a, b, "ba.bin")):
        got, want, seconds = _timed_load(dest, source, tmp_path, name, size)
        assert got == want
        print(f"\nrelayed over TCP, {name}: {size / seconds / 1e6:.1f} MB/s")

    # UDP comes back in the middle of a load: the load completes and a is on UDP afterwards.
    results: list[tuple[str, str, float]] = []
    loader = threading.Thread(target=lambda: results.append(_timed_load(b, a, tmp_path, "mid.bin", 24 << 20)))
    loader.start()
    time.sleep(0.5)  # the load is under way (a 24 MiB relayed load takes seconds)
    _udp(lab, host_a, blocked=False)
    loader.join(180)
    assert results and results[0][0] == results[0][1], "the load across the switch back to UDP failed"
    try:
        wait_until("a back on UDP", lambda: _transport(a) == "udp", 40)
    except AssertionError:
        print(a.log()[-6000:], a.info().get("relayTransports"))
        raise
    for node in (relay, a, b):
        assert node.alive() and "Traceback" not in node.log(), node.log()[-3000:]
