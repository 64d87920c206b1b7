"""Peer sessions, file serving and downloads over an in-memory UDP network (no sockets, no daemons).

The product's own QuicEndpoint, PeerSession, FileServer and Download run on one asyncio loop; the only
stand-in is the UDP transport: ``FakeNet`` routes each datagram to the endpoint owning the destination
address, after a small delay, and can drop, duplicate and reorder (trio's fake_net idea). Its random
choices come from a seeded ``random.Random``. The handshake runs on a clean link (the sans-IO tests in
tests/unit/test_quic_protocol.py cover handshakes under loss without real timers); impairments start
once the sessions are authenticated, so retransmission timers stay in the millisecond range.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kachery_p2p.daemon import download as download_module
from kachery_p2p.daemon.download import Download, Provider
from kachery_p2p.daemon.endpoint import Address, Link, QuicEndpoint
from kachery_p2p.daemon.piece_fetch import fetch_piece
from kachery_p2p.daemon.serve import FileServer
from kachery_p2p.daemon.session import PeerSession
from kachery_p2p.errors import NotFoundError, RemoteProtocolError
from kachery_p2p.ids import FileUri
from kachery_p2p.quic import messages
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.store import CHUNK_SIZE, ContentStore
from kachery_p2p.transfer.plan import DownloadPlan

T = TypeVar("T")
TIMEOUT = 20.0


@dataclass
class Impairment:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0


@dataclass
class FakeNet:
    """An in-memory UDP network between endpoints, keyed by address."""

    rng: random.Random
    delay: float = 0.0005
    impairment: Impairment = field(default_factory=Impairment)
    hosts: dict[Address, QuicEndpoint] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("sent", "dropped", "duplicated"), 0))

    def attach(self, endpoint: QuicEndpoint, addr: Address) -> None:
        self.hosts[addr] = endpoint
        endpoint.connection_made(FakeTransport(self, addr))  # type: ignore[arg-type]

    def route(self, data: bytes, src: Address, dst: Address) -> None:
        self.stats["sent"] += 1
        target = self.hosts.get(dst)
        if target is None or target.transport is None:
            return
        if self.rng.random() < self.impairment.loss:
            self.stats["dropped"] += 1
            return
        copies = 1
        if self.rng.random() < self.impairment.duplicate:
            copies = 2
            self.stats["duplicated"] += 1
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            delay = self.delay
            if self.rng.random() < self.impairment.reorder:
                delay += self.rng.uniform(0, 4 * self.delay)
            loop.call_later(delay, self._deliver, target, data, src)

    @staticmethod
    def _deliver(target: QuicEndpoint, data: bytes, src: Address) -> None:
        if target.transport is not None:
            target.datagram_received(data, src)


class FakeTransport:
    def __init__(self, net: FakeNet, addr: Address) -> None:
        self.net = net
        self.addr = addr
        self.closed = False

    def sendto(self, data: bytes, addr: Address) -> None:
        if not self.closed:
            self.net.route(bytes(data), self.addr, addr)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.addr if name == "sockname" else default


@dataclass
class SimNode:
    """A node's identity, store, channels, endpoint and sessions (what PeerNetwork wires up)."""

    name: str
    addr: Address
    store: ContentStore
    channels: list[str]
    identity: NodeIdentity = field(default_factory=NodeIdentity.generate)
    endpoint: QuicEndpoint = field(init=False)
    server: FileServer = field(init=False)
    accepted: list[PeerSession] = field(default_factory=list)
    refused: list[Exception] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.endpoint = QuicEndpoint(self.identity, on_incoming=self._on_incoming)
        self.server = FileServer(self.store)

    def session_for(self, link: Link, expected: str | None = None) -> PeerSession:
        return PeerSession(link, self.identity, self.name, lambda: list(self.channels), self.server.handle, expected)

    def _on_incoming(self, link: Link) -> None:
        session = self.session_for(link)

        async def admit() -> None:
            try:
                await session.authenticate()
            except Exception as exc:
                self.refused.append(exc)
                return
            self.accepted.append(session)

        task = asyncio.ensure_future(admit())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def dial(self, other: SimNode) -> PeerSession:
        session = self.session_for(self.endpoint.connect(other.addr), other.identity.node_id)
        await session.authenticate(TIMEOUT)
        return session

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.endpoint.close()


def make_nodes(tmp_path: Path, net: FakeNet, *specs: tuple[str, list[str]]) -> list[SimNode]:
    nodes = []
    for index, (name, channels) in enumerate(specs):
        node = SimNode(name, (f"10.0.0.{index + 1}", 5000 + index), ContentStore(tmp_path / name), channels)
        net.attach(node.endpoint, node.addr)
        nodes.append(node)
    return nodes


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(scenario(), 60.0)

    return asyncio.run(main())


async def no_progress(message: dict[str, Any]) -> None:
    return None


async def download(node: SimNode, uri: str, sessions: list[PeerSession]) -> Path:
    """Ask each session ``has`` (as find does), then run the product's Download."""
    file_uri = FileUri.parse(uri)
    providers = []
    for session in sessions:
        reply, _ = await session.request({"op": "has", "sha1": file_uri.sha1}, timeout=TIMEOUT)
        if reply.get("ok"):
            providers.append(Provider(session, int(reply["size"])))
    if not providers:
        raise NotFoundError("no provider")
    return await Download(node.store, file_uri, providers, no_progress).run()


def sha1_file(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


IMPAIRMENTS = {
    "clean": Impairment(),
    "lossy": Impairment(loss=0.05, duplicate=0.05, reorder=0.2),
}


@pytest.mark.parametrize(("name", "seed"), [("clean", 1), ("lossy", 1), ("lossy", 2), ("lossy", 3)])
def test_download_between_two_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, seed: int
) -> None:
    # Small pieces, so that a small file still travels on several parallel streams.
    monkeypatch.setattr(download_module, "DownloadPlan", functools.partial(DownloadPlan, piece_size=256 * 1024))
    net = FakeNet(random.Random(seed))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab", "other"]))
    data = random.Random(seed).randbytes(1_500_000)
    stored = a.store.store_bytes(data)
    uri = f"sha1://{stored.sha1}/data.bin"

    async def scenario() -> tuple[PeerSession, Path]:
        try:
            session = await b.dial(a)
            assert session.node_id == a.identity.node_id and session.label == "a"
            assert session.shared_channels == ["lab"]
            # The accepting side learned B's id from the in-band proof and the same shared channel.
            assert [s.node_id for s in a.accepted] == [b.identity.node_id]
            assert a.accepted[0].shared_channels == ["lab"] and a.accepted[0].label == "b"
            net.impairment = IMPAIRMENTS[name]
            return session, await download(b, uri, [session])
        finally:
            a.close()
            b.close()

    _session, path = run(scenario)
    assert sha1_file(path) == stored.sha1
    assert path == b.store.content_path(stored.sha1)
    assert a.server.bytes_served == len(data)  # (pieces retried after loss are not served twice)
    if name == "lossy":
        assert net.stats["dropped"] > 0 and net.stats["duplicated"] > 0


def test_multi_chunk_download_from_two_providers(tmp_path: Path) -> None:
    net = FakeNet(random.Random(7), impairment=Impairment())
    a, b, c = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]), ("c", ["lab"]))
    data = random.Random(7).randbytes(CHUNK_SIZE + 3_000_000)
    stored = a.store.store_bytes(data)
    assert b.store.store_bytes(data).sha1 == stored.sha1
    assert stored.manifest_sha1 is not None

    async def scenario() -> tuple[Path, Path]:
        try:
            to_a, to_b = await c.dial(a), await c.dial(b)
            with_manifest = await download(c, f"sha1://{stored.sha1}/x?manifest={stored.manifest_sha1}", [to_a, to_b])
            return with_manifest, c.store.content_path(stored.sha1)
        finally:
            for node in (a, b, c):
                node.close()

    path, expected = run(scenario)
    assert path == expected and sha1_file(path) == stored.sha1
    # Both providers served bytes.
    assert a.server.bytes_served > 0 and b.server.bytes_served > 0
    assert a.server.bytes_served + b.server.bytes_served >= len(data)


def test_manifest_is_fetched_when_the_uri_has_none(tmp_path: Path) -> None:
    net = FakeNet(random.Random(3))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    data = random.Random(3).randbytes(CHUNK_SIZE + 10)
    stored = a.store.store_bytes(data)
    requests: list[messages.Request] = []
    serve = a.server.handle

    async def spy(session: PeerSession, request: messages.Request) -> Any:
        requests.append(request)
        return await serve(session, request)

    a.server.handle = spy  # type: ignore[method-assign]

    async def scenario() -> Path:
        try:
            session = await b.dial(a)
            return await download(b, f"sha1://{stored.sha1}/x", [session])
        finally:
            a.close()
            b.close()

    path = run(scenario)
    assert sha1_file(path) == stored.sha1
    assert messages.GetManifest(stored.sha1) in requests
    gets = [r for r in requests if isinstance(r, messages.GetRange)]
    assert {r.end for r in gets} >= {CHUNK_SIZE, CHUNK_SIZE + 10}  # pieces stop at the chunk boundary


def test_no_shared_channel_is_refused_by_the_server(tmp_path: Path) -> None:
    net = FakeNet(random.Random(4))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["elsewhere"]))
    stored = a.store.store_bytes(b"secret contents")

    async def scenario() -> list[dict[str, Any]]:
        try:
            session = await b.dial(a)
            assert session.shared_channels == []
            replies = []
            for header in (
                {"op": "has", "sha1": stored.sha1},
                {"op": "get", "sha1": stored.sha1, "start": 0, "end": 6},
                {"op": "manifest", "sha1": stored.sha1},
            ):
                reply, body = await session.request(header, timeout=TIMEOUT)
                assert body == b""
                replies.append(reply)
            # After B joins the channel and tells A, the same session is served.
            b.channels.append("lab")
            await session.exchange_channels()
            assert session.shared_channels == ["lab"]
            assert a.accepted[0].shared_channels == ["lab"]
            reply, body = await session.request({"op": "get", "sha1": stored.sha1, "start": 0, "end": 6},
                                                timeout=TIMEOUT)
            replies.append({**reply, "body": body.decode()})
            return replies
        finally:
            a.close()
            b.close()

    replies = run(scenario)
    assert [r["code"] for r in replies[:3]] == ["not_authorized"] * 3
    assert replies[3]["ok"] is True and replies[3]["body"] == "secret"


def test_dialing_the_wrong_key_fails_and_nothing_is_accepted(tmp_path: Path) -> None:
    net = FakeNet(random.Random(5))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))

    async def scenario() -> RemoteProtocolError:
        try:
            link = b.endpoint.connect(a.addr)
            session = b.session_for(link, NodeIdentity.generate().node_id)
            with pytest.raises(RemoteProtocolError) as info:
                await session.authenticate(TIMEOUT)
            await asyncio.wait_for(link.closed, TIMEOUT)
            # A's side of the connection ends too, without an authenticated session.
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while a.endpoint.links:
                assert asyncio.get_running_loop().time() < deadline, "A kept the refused link"
                await asyncio.sleep(0.01)
            return info.value
        finally:
            a.close()
            b.close()

    error = run(scenario)
    assert error.code == "wrong_node_id"
    assert a.accepted == []


def test_accepting_side_gives_up_at_once_when_the_client_hangs_up(tmp_path: Path) -> None:
    net = FakeNet(random.Random(10))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))

    async def scenario() -> float:
        try:
            link = b.endpoint.connect(a.addr)
            await asyncio.wait_for(link.handshake, TIMEOUT)
            link.close("changed my mind")  # before sending any proof
            loop = asyncio.get_running_loop()
            started = loop.time()
            while a.tasks and loop.time() - started < 2.0:
                await asyncio.sleep(0.01)
            return loop.time() - started
        finally:
            a.close()
            b.close()

    waited = run(scenario)
    assert waited < 2.0, "the admit task still waits for a proof from a closed link"
    assert a.accepted == [] and len(a.refused) == 1


def test_many_parallel_requests_on_one_session(tmp_path: Path) -> None:
    net = FakeNet(random.Random(6))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    data = os.urandom(1_000_000)
    stored = a.store.store_bytes(data)

    async def scenario() -> list[tuple[dict[str, Any], bytes]]:
        try:
            session = await b.dial(a)
            net.impairment = Impairment(loss=0.03, duplicate=0.03, reorder=0.2)
            ranges = [(i * 25_000, i * 25_000 + 20_000) for i in range(40)]
            return list(await asyncio.gather(*(
                session.request({"op": "get", "sha1": stored.sha1, "start": s, "end": e}, timeout=TIMEOUT)
                for s, e in ranges
            )))
        finally:
            a.close()
            b.close()

    results = run(scenario)
    for index, (reply, body) in enumerate(results):
        assert reply["ok"] is True and body == data[index * 25_000 : index * 25_000 + 20_000]


# ---- a provider that lies about content ---------------------------------------------------------------


async def _garbage(length: int) -> AsyncIterator[bytes]:
    yield b"\x5a" * length


def make_liar(node: SimNode) -> None:
    """Make ``node`` answer ``get`` with wrong bytes of the right length (``has`` stays honest)."""
    honest = node.server.handle

    async def lie(session: PeerSession, request: messages.Request) -> Any:
        if isinstance(request, messages.GetRange):
            return {"ok": True, "length": request.end - request.start}, _garbage(request.end - request.start)
        return await honest(session, request)

    node.server.handle = lie  # type: ignore[method-assign]


def test_a_liars_bytes_never_enter_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "DownloadPlan", functools.partial(DownloadPlan, piece_size=256 * 1024))
    net = FakeNet(random.Random(8))
    liar, b = make_nodes(tmp_path, net, ("liar", ["lab"]), ("b", ["lab"]))
    data = os.urandom(1_000_000)
    stored = liar.store.store_bytes(data)
    make_liar(liar)

    async def scenario() -> None:
        try:
            session = await b.dial(liar)
            with pytest.raises(NotFoundError, match="bad data"):
                await download(b, f"sha1://{stored.sha1}/x", [session])
        finally:
            liar.close()
            b.close()

    run(scenario)
    assert not b.store.has(stored.sha1)
    assert not b.store.content_path(stored.sha1).exists()


def test_an_honest_provider_finishes_what_a_liar_spoiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "DownloadPlan", functools.partial(DownloadPlan, piece_size=256 * 1024))
    net = FakeNet(random.Random(9))
    honest, liar, b = make_nodes(tmp_path, net, ("honest", ["lab"]), ("liar", ["lab"]), ("b", ["lab"]))
    data = os.urandom(1_500_000)  # one chunk, six pieces: four streams to each provider share them
    stored = honest.store.store_bytes(data)
    liar.store.store_bytes(data)
    make_liar(liar)

    async def scenario() -> Path:
        try:
            sessions = [await b.dial(honest), await b.dial(liar)]
            return await download(b, f"sha1://{stored.sha1}/x", sessions)
        finally:
            for node in (honest, liar, b):
                node.close()

    path = run(scenario)
    assert sha1_file(path) == stored.sha1


# ---- two copies of one piece (endgame) racing into the partial file ----------------------------------


class _ScriptedLink:
    is_closed = False
    path = type("Path", (), {"kind": "direct"})()


class ScriptedSession:
    """Stands in for a PeerSession: ``request`` runs a script that feeds the sink as it likes."""

    def __init__(self, node_id: str, script: Callable[[Callable[[bytes], None]], Awaitable[None]]) -> None:
        self.node_id = node_id
        self.link = _ScriptedLink()
        self.script = script

    async def request(
        self, header: dict[str, Any], sink: Callable[[bytes], None] | None = None, timeout: float | None = None
    ) -> tuple[dict[str, Any], bytes]:
        assert sink is not None
        await self.script(sink)
        return {"ok": True, "length": header["end"] - header["start"]}, b""




def test_a_streaming_copy_cannot_overwrite_a_completed_endgame_copy(tmp_path: Path) -> None:
    mib = 1 << 20
    data = os.urandom(3 * mib)  # one chunk, one piece
    sha1 = hashlib.sha1(data).hexdigest()
    store = ContentStore(tmp_path / "store")

    async def scenario() -> tuple[bool, list[str]]:
        honest_wrote = asyncio.Event()
        liar_may_finish = asyncio.Event()

        async def liar(sink: Callable[[bytes], None]) -> None:
            sink(b"\x5a" * mib)  # streams its first MiB (the piece is open: written)
            await honest_wrote.wait()
            sink(b"\x5a" * mib)  # a block that lands just after the honest copy is complete
            await liar_may_finish.wait()
            sink(b"\x5a" * mib)

        async def honest(sink: Callable[[bytes], None]) -> None:
            sink(data)  # the whole piece at once: written in one block
            honest_wrote.set()
            # The stream's FIN resolves a future; the task awaiting it resumes a loop turn later.
            await asyncio.sleep(0)

        plan = DownloadPlan([(0, len(data))], set())
        providers = [
            Provider(ScriptedSession("1" * 64, liar), len(data)),  # type: ignore[arg-type]
            Provider(ScriptedSession("2" * 64, honest), len(data)),  # type: ignore[arg-type]
        ]
        download_ = Download(store, FileUri.parse(f"sha1://{sha1}/x"), providers, no_progress)
        partial = store.open_partial(sha1, len(data), None)
        try:
            piece = plan.next_piece(providers[0].node_id)
            copy = plan.endgame_piece(providers[1].node_id)
            assert piece is not None and copy == piece

            async def fetch(provider: Provider, buffered: bool) -> None:
                assert piece is not None
                count = download_.count_received
                got = await fetch_piece(download_.sha1, provider, piece, partial, plan, buffered, count)
                if got and plan.piece_received(piece, provider.node_id) is not None:
                    liar_may_finish.set()

            await asyncio.gather(fetch(providers[0], False), fetch(providers[1], True))
            ok = partial.verify_chunk(0)
            banned = [] if ok else plan.chunk_failed(0)
            return ok, banned
        finally:
            partial.close()

    ok, banned = run(scenario)
    assert banned != ["2" * 64], "the honest provider was banned for the liar's bytes"
    assert ok
