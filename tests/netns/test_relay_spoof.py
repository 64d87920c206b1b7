"""Issue 10 #14 in the NAT lab: an attacker on the public segment forges relay frames with the source
address (IP and port) of a node's registration while that node sends a file through the relay.

Before, the relay took every frame from that address as the node's and charged it to the node's rate
limit, so the forged ones used it up (the issue: a relayed 20 MB load went from 1.7 s to 8.0 s). Now a
node's frames carry the frame token the relay gave it over its QUIC session: the forged ones are dropped
("bad frame token") before they cost the node anything, and the load takes about as long as without them.

The attacker sends with a raw socket (IP_HDRINCL), as an off-path host spoofing an address would. The relay
runs with ``--relay-rate 4`` (MB/s per node) so the flood can fill it from Python on a shared machine.
``KACHERY_P2P_TEST_RELAY_PYTHONPATH`` runs the relay from another source tree (to measure the old relay).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lab import Lab
from nodes import RELAY_PORT, LabNode, sha1_of, start_node, start_peer, wait_until, write_random_file

CHANNEL = "spoof"
LOAD_MB = int(os.environ.get("KACHERY_P2P_SPOOF_TEST_MB", "12"))
RELAY_RATE_MBPS = 4
FLOOD_MBPS = 8  # twice the node's relay rate

FLOOD = r"""
import os, socket, struct, sys, time
src_ip, src_port, dst_ip, dst_port, target, mbps, seconds = sys.argv[1:8]
src_port, dst_port, mbps, seconds = int(src_port), int(dst_port), float(mbps), float(seconds)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
def packet(payload):
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    return ip + udp
body = b"\xc0" + os.urandom(1390)  # looks like a QUIC short-header packet to the target
frames = [packet(b"\x20" + bytes.fromhex(target) + body),
          packet(b"\x22" + bytes.fromhex(target) + os.urandom(16) + body)]
per_sec = mbps * 1e6 / len(frames[0])
start, sent = time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = int((time.monotonic() - start) * per_sec)
    while sent < due:
        sock.sendto(frames[sent % 2], (dst_ip, 0))
        sent += 1
    time.sleep(0.002)
print(sent)
"""


def _relayed(node: LabNode, other_id: str) -> bool:
    peer = node.peer(other_id)
    return peer is not None and CHANNEL in peer["channels"]


def test_forged_frames_from_a_nodes_address_do_not_slow_its_relayed_load(lab: Lab, tmp_path: Path) -> None:
    relay_host = lab.add_public_host("relay")
    attacker = lab.add_public_host("attacker")
    host_a, host_b = lab.add_natted_host("a", "symmetric"), lab.add_natted_host("b", "symmetric")
    old_tree = os.environ.get("KACHERY_P2P_TEST_RELAY_PYTHONPATH")
    here = os.getcwd()
    if old_tree:  # ``python -m`` looks in the working directory first
        os.environ["PYTHONPATH"] = old_tree
        os.chdir(tmp_path)
    try:
        relay = start_node(
            lab, relay_host, tmp_path / "relay", "relay", "--relay", "--port", str(RELAY_PORT),
            "--relay-rate", str(RELAY_RATE_MBPS),
        )
    finally:
        if old_tree:
            del os.environ["PYTHONPATH"]
            os.chdir(here)
    a = start_peer(lab, host_a, tmp_path / "a", "a", relay_host)
    b = start_peer(lab, host_b, tmp_path / "b", "b", relay_host)
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    a_id, b_id = a.info()["nodeId"], b.info()["nodeId"]
    wait_until("b to reach a through the relay", lambda: _relayed(b, a_id), 60)
    # a's address as the relay sees it (its NAT mapping): what the attacker forges
    observed = wait_until("a's registration", lambda: next(iter(a.info()["relays"].values()), None), 30)
    a_ip, a_port = observed.rsplit(":", 1)

    uris = {}
    for name in ("quiet", "flooded"):  # two files: b keeps what it loaded
        source = tmp_path / f"{name}.bin"
        digest = write_random_file(source, LOAD_MB << 20)
        uris[name] = (a.cli("store", str(source)).stdout.strip(), digest)

    def timed_load(name: str) -> float:
        uri, digest = uris[name]
        started = time.monotonic()
        loaded = b.cli("load", uri, "--timeout", "120").stdout.strip()
        assert sha1_of(loaded) == digest
        return time.monotonic() - started

    quiet = timed_load("quiet")
    flood = attacker.popen(
        [sys.executable, "-c", FLOOD, a_ip, a_port, relay_host.ip, str(RELAY_PORT), b_id, str(FLOOD_MBPS), "60"],
        stdout=open(tmp_path / "flood.out", "w"),  # noqa: SIM115
    )
    time.sleep(1.0)  # the flood is on before the load starts
    try:
        flooded = timed_load("flooded")
    finally:
        flood.terminate()
        flood.wait(10)
    stats = json.loads(relay.cli("node-info", "--json").stdout)["relay"]
    print(
        f"\nrelayed {LOAD_MB} MB at --relay-rate {RELAY_RATE_MBPS}: {quiet:.1f} s quiet, {flooded:.1f} s while "
        f"{FLOOD_MBPS} MB/s of frames were forged from a's address; relay: bad frame token "
        f"{stats.get('dropped: bad frame token', 0)}, rate limit {stats.get('dropped: rate limit', 0)}"
    )
    assert stats.get("dropped: bad frame token", 0) > 1000, stats
    assert flooded < 2 * quiet + 5, f"the forged frames slowed the load: {quiet:.1f} s -> {flooded:.1f} s"
    for node in (relay, a, b):
        assert node.alive(), node.log()[-2000:]
        assert "Traceback" not in node.log()
