"""A node behind a symmetric NAT whose router runs real miniupnpd (UPnP IGD, NAT-PMP, PCP) meets another node
behind a symmetric NAT: without the mapping this pair stays relayed (see test_nat_matrix.py); with it, direct.
The mapping client is also driven alone against miniupnpd with each protocol (see upnp.py for the router set-up).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from lab import Lab
from nodes import LabNode, sha1_of, start_peer, start_relay, wait_until, write_random_file
from upnp import MAPPED_IP, miniupnpd_available, nat_rules, start_miniupnpd

CHANNEL = "upnp"
needs_miniupnpd = pytest.mark.skipif(
    not miniupnpd_available(), reason="needs Debian's miniupnpd and iptables-legacy (apt-get install miniupnpd)"
)
MAP_AND_UNMAP = """
import asyncio, json, sys
from kachery_p2p.daemon.portmap import PortMapping

async def main():
    mapping = PortMapping(14507, protocols=(sys.argv[1],))
    task = asyncio.create_task(mapping.run())
    while mapping.external is None and not task.done():
        await asyncio.wait([task], timeout=0.05)
    print(json.dumps(mapping.info()), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await mapping.stop()
    task.cancel()
    print(json.dumps(mapping.info()), flush=True)

asyncio.run(main())
"""


@needs_miniupnpd
@pytest.mark.parametrize("protocol", ["pcp", "natpmp", "upnp"])
def test_each_protocol_maps_on_real_miniupnpd_and_unmaps_at_stop(lab: Lab, tmp_path: Path, protocol: str) -> None:
    host = lab.add_natted_host("a", "symmetric")
    start_miniupnpd(lab, host, tmp_path, [])
    proc = host.popen([sys.executable, "-c", MAP_AND_UNMAP, protocol], stdin=-1, stdout=-1, text=True)
    mapped = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
    assert mapped["state"] == "mapped" and mapped["protocol"] == protocol, mapped
    assert mapped["external"].startswith(f"{MAPPED_IP}:")
    rules = nat_rules(host.router_ns or "")
    assert f"--dport {mapped['external'].split(':')[1]} -j DNAT" in rules, rules
    proc.stdin.write("\n")  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]
    assert json.loads(proc.stdout.readline())["state"] == "stopped"  # type: ignore[union-attr]
    assert proc.wait(10) == 0
    assert "DNAT" not in nat_rules(host.router_ns or "")


def _peer(node: LabNode, other_id: str) -> dict[str, Any] | None:
    peer = node.peer(other_id)
    return peer if peer is not None and CHANNEL in peer["channels"] else None


@needs_miniupnpd
def test_symmetric_nat_with_upnp_router_goes_direct_and_the_mapping_is_removed_at_stop(
    lab: Lab, tmp_path: Path
) -> None:
    relay_host = lab.add_public_host("relay")
    host_a = lab.add_natted_host("a", "symmetric")
    host_b = lab.add_natted_host("b", "symmetric")
    (tmp_path / "upnp").mkdir()
    gateway = start_miniupnpd(lab, host_a, tmp_path / "upnp", [relay_host, host_b])
    relay = start_relay(lab, relay_host, tmp_path / "relay")
    a = start_peer(lab, host_a, tmp_path / "a", "a", relay_host, "--port-mapping")
    b = start_peer(lab, host_b, tmp_path / "b", "b", relay_host)

    mapping = wait_until("a port mapping", lambda: (a.info().get("portMapping") or {}).get("external"), 30)
    assert mapping.startswith(f"{MAPPED_IP}:"), mapping
    assert "DNAT" in nat_rules(host_a.router_ns or "")
    for node in (a, b):
        node.cli("join-channel", CHANNEL)
    a_id, b_id = a.info()["nodeId"], b.info()["nodeId"]
    wait_until("a direct path on b's side", lambda: (_peer(b, a_id) or {}).get("path") == "direct", 60)
    wait_until("a direct path on a's side", lambda: (_peer(a, b_id) or {}).get("path") == "direct", 30)
    print(f"\nport mapping: a mapped at {mapping} ({a.info()['portMapping']['protocol']}); a x b both direct")

    for source, dest, name in ((a, b, "ab.bin"), (b, a, "ba.bin")):
        digest = write_random_file(tmp_path / name, 2 * 1024 * 1024 + 3)
        uri = source.cli("store", str(tmp_path / name)).stdout.strip()
        assert sha1_of(dest.cli("load", uri, "--timeout", "30").stdout.strip()) == digest

    a.cli("stop-daemon")
    wait_until("a to exit", lambda: not a.alive(), 20)
    wait_until("the mapping to be removed", lambda: "DNAT" not in nat_rules(host_a.router_ns or ""), 10)
    assert gateway.poll() is None, (tmp_path / "upnp" / "miniupnpd.log").read_text()
    for node in (relay, b):
        assert node.alive() and "Traceback" not in node.log()
    assert "Traceback" not in a.log()
