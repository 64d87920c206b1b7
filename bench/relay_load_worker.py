"""One load-generator process of ``bench/relay_load.py``: it holds ``count`` simulated nodes, each with
its own identity, its own loopback address (127.1.x.y) and UDP socket, and a real QUIC session with the
relay, and does what the parent tells it over a pipe:

    ("register", concurrency, seconds_allowed)  -> ("registered", ok, failures, seconds)
    ("publish", concurrency)   -> ("published", failures)
    ("lookup", concurrency)    lookups round-robin over its nodes until ("stop",)
                               -> ("looked-up", latencies, peers_found, failures)
    ("close",)                 closes every session and exits (so does a closed pipe: the parent died)

Failures are sent as at most a few example strings plus a count, so the pipe stays small.
"""

from __future__ import annotations

import asyncio
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.channels.rendezvous import encode_record
from kachery_p2p.daemon.endpoint import Link, QuicEndpoint
from kachery_p2p.daemon.session import PeerSession
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic import messages
from kachery_p2p.quic.identity import NodeIdentity

GROUP = 10  # nodes per channel: a lookup returns GROUP - 1 records besides the node's own
EXAMPLES = 5


def _refuse_link(link: Link) -> None:
    # Closed once the endpoint has set the new connection up (closing inside on_incoming is too early).
    asyncio.get_running_loop().call_soon(link.close, "not accepting")


async def _refuse(session: PeerSession, request: messages.Request) -> Any:
    raise RemoteProtocolError("a simulated node serves nothing", code="not_authorized")


def node_host(index: int) -> str:
    """Each node from its own loopback address, as real nodes come from their own addresses (the relay
    limits half-open connections per source address). 250 x 250 x 250 addresses in 127.1-250.x.y."""
    return f"127.{index // 62500 + 1}.{index // 250 % 250}.{index % 250 + 1}"


class SimNode:
    def __init__(self, index: int) -> None:
        self.identity = NodeIdentity.generate()
        self.channel = f"relay-load-{index // GROUP}"
        self.endpoint = QuicEndpoint(self.identity, on_incoming=_refuse_link)
        self.session: PeerSession | None = None
        self.host = node_host(index)
        self.port = 0

    async def register(self, relay_port: int, relay_id: str) -> None:
        self.port = (await self.endpoint.open(self.host, 0))[1]
        link = self.endpoint.connect(("127.0.0.1", relay_port))
        self.session = PeerSession(link, self.identity, "sim", lambda: [self.channel], _refuse, relay_id)
        await self.session.authenticate(30)
        await self.publish()

    async def publish(self) -> None:
        assert self.session is not None
        record = encode_record(self.identity, "sim", [rendezvous_id(self.channel)], [f"{self.host}:{self.port}"],
                               time.time(), 600)
        messages.check_ok((await self.session.request({"op": "publish", "record": record}, timeout=30))[0])

    async def lookup(self) -> tuple[float, int]:
        assert self.session is not None
        started = time.perf_counter()
        reply, _ = await self.session.request({"op": "lookup", "rendezvousIds": [rendezvous_id(self.channel)]},
                                              timeout=30)
        peers = messages.check_ok(reply).get("peers", [])
        return time.perf_counter() - started, len(peers) if isinstance(peers, list) else 0

    def close(self) -> None:
        if self.session is not None:
            self.session.close("bench over")
        self.endpoint.close()


class Failures:
    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, what: str, exc: BaseException) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{what}: {type(exc).__name__}: {exc}")

    def wire(self) -> tuple[int, list[str]]:
        return self.count, self.examples


async def _in_parallel(items: list[SimNode], concurrency: int, work: Any, failures: Failures, what: str,
                       deadline: float = float("inf")) -> list[SimNode]:
    """Run ``work(node)`` for every node, ``concurrency`` at a time, none started after ``deadline``
    (time.monotonic()); the nodes for which it succeeded."""
    done: list[SimNode] = []
    queue = list(reversed(items))

    async def lane() -> None:
        while queue and time.monotonic() < deadline:
            node = queue.pop()
            try:
                await work(node)
                done.append(node)
            except Exception as exc:
                failures.add(what, exc)

    await asyncio.gather(*(lane() for _ in range(max(1, concurrency))))
    return done


class Worker:
    def __init__(self, conn: Connection, first: int, count: int, relay_port: int, relay_id: str) -> None:
        self.conn = conn
        self.relay_port = relay_port
        self.relay_id = relay_id
        self.nodes = [SimNode(first + i) for i in range(count)]
        self.registered: list[SimNode] = []
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def _readable(self) -> None:
        try:
            self.commands.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            self.commands.put_nowait(("close",))
            asyncio.get_running_loop().remove_reader(self.conn.fileno())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._readable)
        try:
            while True:
                command = await self.commands.get()
                if command[0] == "close":
                    return
                if command[0] == "register":
                    failures = Failures()
                    started = time.monotonic()
                    progress = asyncio.ensure_future(self._progress(started))
                    self.registered = await _in_parallel(
                        self.nodes, command[1], lambda n: n.register(self.relay_port, self.relay_id), failures,
                        "register", started + command[2])
                    progress.cancel()
                    self.conn.send(("registered", len(self.registered), failures.wire(), time.monotonic() - started))
                elif command[0] == "publish":
                    failures = Failures()
                    await _in_parallel(self.registered, command[1], lambda n: n.publish(), failures, "publish")
                    self.conn.send(("published", failures.wire()))
                elif command[0] == "lookup":
                    await self._lookups(command[1])
        finally:
            for node in self.nodes:
                node.close()
            await asyncio.sleep(0.2)  # the CONNECTION_CLOSEs leave

    async def _progress(self, started: float) -> None:
        """A line every 30 s while registering (a 10,000-node run takes minutes)."""
        while True:
            await asyncio.sleep(30)
            ready = sum(1 for n in self.nodes if n.session is not None and n.session.ready.done())
            print(f"[relay-load] generator {os.getpid()}: {ready} / {len(self.nodes)} authenticated after "
                  f"{time.monotonic() - started:.0f} s", flush=True)

    async def _lookups(self, concurrency: int) -> None:
        latencies: list[float] = []
        found: list[int] = []
        failures = Failures()
        stop = asyncio.Event()
        cursor = [0]

        async def lane() -> None:
            while not stop.is_set() and self.registered:
                node = self.registered[cursor[0] % len(self.registered)]
                cursor[0] += 1
                try:
                    latency, peers = await node.lookup()
                    latencies.append(latency)
                    found.append(peers)
                except Exception as exc:
                    failures.add("lookup", exc)

        lanes = [asyncio.ensure_future(lane()) for _ in range(max(1, concurrency))]
        while True:
            command = await self.commands.get()
            if command[0] in ("stop", "close"):
                break
        stop.set()
        await asyncio.gather(*lanes, return_exceptions=True)
        self.conn.send(("looked-up", latencies, found, failures.wire()))
        if command[0] == "close":
            self.commands.put_nowait(command)


def worker_main(conn: Connection, first: int, count: int, relay_port: int, relay_id: str) -> None:
    """Entry point of a generator process (multiprocessing, spawn)."""
    asyncio.run(Worker(conn, first, count, relay_port, relay_id).run())
