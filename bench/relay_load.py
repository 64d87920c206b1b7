"""Relay load: N simulated nodes (each its own UDP socket, identity and real QUIC session) register with
a relay daemon on loopback, publish a rendezvous record and look their channel peers up.

Figures: relay RSS per registered node, lookup latency p50/p99 with every node registered, the
relay's CPU during the lookups, and how many nodes could register at all. Nodes share channels in
groups of 10 (a lookup returns 9 records). Bounded: ``--nodes`` (default 200) and ``--timeout``.

    python -m bench relay-load --nodes 1000
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from typing import Any

from bench.common import bench_parser, measure_rss, report
from bench.daemons import cleanup, start_daemon
from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.channels.rendezvous import encode_record
from kachery_p2p.daemon.endpoint import QuicEndpoint
from kachery_p2p.daemon.session import PeerSession
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic import messages
from kachery_p2p.quic.identity import NodeIdentity

NAME = "relay-load"
GROUP = 10
BATCH = 25


async def _refuse(session: PeerSession, request: messages.Request) -> Any:
    raise RemoteProtocolError("a simulated node serves nothing", code="not_authorized")


class SimNode:
    def __init__(self, index: int) -> None:
        self.identity = NodeIdentity.generate()
        self.channel = f"relay-load-{index // GROUP}"
        self.endpoint = QuicEndpoint(self.identity, on_incoming=lambda link: link.close("not accepting"))
        self.session: PeerSession | None = None
        self.port = 0
        # Each node from its own loopback address, as real nodes come from their own addresses (the
        # relay limits half-open connections per source address).
        self.host = f"127.1.{index // 250}.{index % 250 + 1}"

    async def register(self, relay_port: int, relay_id: str) -> None:
        self.port = (await self.endpoint.open(self.host, 0))[1]
        link = self.endpoint.connect(("127.0.0.1", relay_port))
        self.session = PeerSession(link, self.identity, "sim", lambda: [self.channel], _refuse, relay_id)
        await self.session.authenticate(20)
        await self.publish()

    async def publish(self) -> None:
        assert self.session is not None
        record = encode_record(self.identity, "sim", [rendezvous_id(self.channel)], [f"{self.host}:{self.port}"],
                               time.time(), 300)
        messages.check_ok((await self.session.request({"op": "publish", "record": record}, timeout=20))[0])

    async def lookup(self) -> tuple[float, int]:
        assert self.session is not None
        started = time.perf_counter()
        reply, _ = await self.session.request({"op": "lookup", "rendezvousIds": [rendezvous_id(self.channel)]},
                                              timeout=20)
        peers = messages.check_ok(reply).get("peers", [])
        return time.perf_counter() - started, len(peers) if isinstance(peers, list) else 0

    def close(self) -> None:
        if self.session is not None:
            self.session.close("bench over")
        self.endpoint.close()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(count: int, relay_port: int, relay_id: str, pid: int, timeout: float) -> dict[str, Any]:
    nodes = [SimNode(i) for i in range(count)]
    registered: list[SimNode] = []
    failures: list[str] = []
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    try:
        for i in range(0, count, BATCH):
            if time.monotonic() > deadline:
                failures.append("time limit reached while registering")
                break
            batch = nodes[i : i + BATCH]
            results = await asyncio.gather(*(n.register(relay_port, relay_id) for n in batch), return_exceptions=True)
            for node, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    failures.append(f"{type(result).__name__}: {result}")
                else:
                    registered.append(node)
        register_s = time.monotonic() - started
        # Records live 300 s: publish again so that a long registration phase leaves none expired.
        for i in range(0, len(registered), BATCH):
            await asyncio.gather(*(n.publish() for n in registered[i : i + BATCH]), return_exceptions=True)
        await asyncio.sleep(1.0)
        rss = measure_rss(pid)["VmRSS"]
        cpu_before = _cpu_seconds(pid)
        lookup_started = time.monotonic()
        latencies: list[float] = []
        found: list[int] = []
        for i in range(0, len(registered), BATCH):
            results = await asyncio.gather(*(n.lookup() for n in registered[i : i + BATCH]), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    failures.append(f"lookup: {type(result).__name__}: {result}")
                else:
                    latencies.append(result[0])
                    found.append(result[1])
        lookup_s = time.monotonic() - lookup_started
        cpu = _cpu_seconds(pid) - cpu_before
    finally:
        for node in nodes:
            node.close()
    latencies.sort()
    return {
        "registered": len(registered), "register_s": register_s, "rss": rss, "failures": failures,
        "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        "lookups": len(latencies), "cpu_pct": 100 * cpu / lookup_s if lookup_s else 0.0,
        "peers_per_lookup": sum(found) / len(found) if found else 0.0,
    }


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200, help="simulated nodes (default 200)")
    parser.add_argument("--timeout", type=float, default=600.0, help="time limit for registering (default 600 s)")
    args = parser.parse_args(argv)
    count = min(args.nodes, 50) if args.quick else args.nodes
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))
    relay = start_daemon("relay-load", ["--relay", "--relay-max-nodes", str(count + 10)])
    try:
        time.sleep(1.0)
        idle = measure_rss(relay.proc.pid)["VmRSS"]
        result = asyncio.run(_drive(count, relay.udp_port, relay.info["nodeId"], relay.proc.pid, args.timeout))
    finally:
        cleanup(relay)
    config = f"{count} simulated nodes on loopback, channels of {GROUP}, batches of {BATCH}"
    if result["failures"]:
        print(f"[{NAME}] {len(result['failures'])} failures, first: {result['failures'][:3]}")
    per_node = (result["rss"] - idle) / max(1, result["registered"])
    return [
        report(f"{NAME} registered nodes", result["registered"], "nodes", count, target="ratio>=1", config=config,
               register_s=round(result["register_s"], 1), failures=len(result["failures"])),
        report(f"{NAME} relay RSS per node", per_node / 1e3, "kB", None, config=config,
               relay_idle_mb=round(idle / 1e6, 1), relay_loaded_mb=round(result["rss"] / 1e6, 1)),
        report(f"{NAME} lookup p50", result["p50"] * 1e3, "ms", None, config=config,
               lookups=result["lookups"], peers_per_lookup=round(result["peers_per_lookup"], 1)),
        report(f"{NAME} lookup p99", result["p99"] * 1e3, "ms", None, config=config),
        report(f"{NAME} relay CPU during lookups", result["cpu_pct"], "%", None, config=config),
    ]
