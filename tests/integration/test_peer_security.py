"""Who may talk to a daemon, and what it serves them, checked against real daemons on loopback.

Some tests dial a daemon from this test process with the product's own QUIC endpoint and a fresh
identity, so they can do what a well-behaved daemon never does: ask without sharing a channel, skip or
replay the in-band proof, send broken frames. That shows the checks sit where requests are SERVED.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from helpers import LoopThread, peer_entry, udp_port, wait_until

from kachery_p2p.daemon.endpoint import Link, LinkClosed, QuicEndpoint
from kachery_p2p.daemon.session import FrameCollector, PeerSession
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic import messages
from kachery_p2p.quic.auth import make_auth
from kachery_p2p.quic.frames import encode_frame
from kachery_p2p.quic.identity import NodeIdentity, check_peer_certificate
from kachery_p2p.quic.settings import peer_certificate

CONNECT_TIMEOUT = 30.0
STEP_TIMEOUT = 10.0
CHUNK = 20_000_000
T = TypeVar("T")


class Daemon(Protocol):
    label: str
    storage_dir: Path

    @property
    def node_id(self) -> str: ...
    def run(self, command: str, *args: str, **kwargs: Any) -> Any: ...
    def api(self, fn_name: str, *args: Any, **kwargs: Any) -> Any: ...
    def log_text(self) -> str: ...
    def probe(self) -> dict[str, Any] | None: ...


class Factory(Protocol):
    def start(self, label: str = "a", extra_args: Sequence[str] = ()) -> Any: ...


# ---- helpers (daemon side) -----------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"








def wait_for_peer(
    daemon: Daemon, node_id: str, what: str, check: Callable[[dict[str, Any]], bool] = lambda entry: True
) -> dict[str, Any]:
    """Poll ``daemon``'s peers until ``node_id`` is listed and ``check`` holds; its entry."""

    def ready() -> dict[str, Any] | None:
        entry = peer_entry(daemon, node_id)
        return entry if entry is not None and check(entry) else None

    found = wait_until(ready, CONNECT_TIMEOUT, what)
    assert found is not None
    return found


def join(daemon: Daemon, channel: str) -> None:
    result = daemon.run("join-channel", channel)
    assert result.returncode == 0, result.stderr


def store_bytes(daemon: Daemon, data: bytes, name: str) -> str:
    uri = daemon.api("store_bytes", data, name)
    assert isinstance(uri, str)
    return uri


def sha1_of_uri(uri: str) -> str:
    return uri[len("sha1://") :].split("/")[0].split("?")[0]


# ---- a daemon that presents another key than the one dialed --------------------------------------


def test_dialer_refuses_a_peer_with_another_key(daemon_factory: Factory) -> None:
    a = daemon_factory.start("alpha", ["-v"])
    channel = unique("pin")
    join(a, channel)
    wrong = NodeIdentity.generate().node_id
    assert wrong != a.node_id
    b = daemon_factory.start("beta", ["-v", "--bootstrap", f"{wrong}@127.0.0.1:{udp_port(a)}"])
    join(b, channel)

    def refusals() -> list[str]:
        return [
            line for line in b.log_text().splitlines()
            if "could not connect" in line and wrong[:12] in line and a.node_id[:12] in line and "we dialed" in line
        ]

    # B retries (after 1 s, then 2 s): wait for two refusals, so a retry was refused as well.
    wait_until(lambda: len(refusals()) >= 2, CONNECT_TIMEOUT, "B to log the key mismatch twice")
    assert " WARNING " in refusals()[0]  # said loudly once (then quietly while retrying)
    assert peer_entry(b, a.node_id) is None
    assert peer_entry(b, wrong) is None
    assert b.api("get_peers") == []
    # A never got B's proof either: the dialer hangs up before authenticating.
    assert peer_entry(a, b.node_id) is None


def test_dialer_with_the_right_pinned_key_connects(daemon_factory: Factory) -> None:
    a = daemon_factory.start("alpha", ["-v"])
    channel = unique("pin")
    join(a, channel)
    b = daemon_factory.start("beta", ["-v", "--bootstrap", f"{a.node_id}@127.0.0.1:{udp_port(a)}"])
    join(b, channel)
    entry = wait_for_peer(b, a.node_id, "B to connect to the pinned A", lambda e: channel in e["channels"])
    assert entry["label"] == "alpha"


# ---- channels are enforced -----------------------------------------------------------------------


def test_peer_in_another_channel_gets_nothing_until_it_joins(daemon_factory: Factory) -> None:
    x, y = unique("x"), unique("y")
    a = daemon_factory.start("alpha", ["-v"])
    join(a, x)
    b = daemon_factory.start("beta", ["-v", "--bootstrap", f"127.0.0.1:{udp_port(a)}"])
    join(b, y)
    # Connected (the link is authenticated) but sharing nothing.
    assert wait_for_peer(b, a.node_id, "B to connect to A")["channels"] == []
    assert wait_for_peer(a, b.node_id, "A to list B")["channels"] == []

    data = os.urandom(300_000)
    uri = store_bytes(a, data, "secret.bin")
    found = b.run("find", uri, "--timeout", "1")
    assert found.returncode == 3 and found.stdout == "", (found.returncode, found.stdout, found.stderr)
    assert found.stderr.startswith("Error:")
    load = b.run("load", uri, "--timeout", "1")
    assert load.returncode == 3 and load.stdout == ""
    assert next(line for line in load.stderr.splitlines() if line.strip()).startswith("Error:")
    assert b.api("load_file", uri, timeout_sec=1.0) is None
    # Nor can A get B's files.
    uri_b = store_bytes(b, os.urandom(1000), "b.bin")
    assert a.api("load_file", uri_b, timeout_sec=1.0) is None

    # B joins x on the existing connection: the channel update reaches both sides.
    join(b, x)
    wait_for_peer(b, a.node_id, "B to see channel x shared", lambda e: e["channels"] == [x])
    wait_for_peer(a, b.node_id, "A to see channel x shared", lambda e: e["channels"] == [x])
    load = b.run("load", uri, "--timeout", "5")
    assert load.returncode == 0, load.stderr
    assert Path(load.stdout.strip()).read_bytes() == data
    assert a.api("load_bytes", uri_b, timeout_sec=5.0) is not None

    # A leaves x: B is refused again (A checks where it serves, B stops asking).
    assert a.run("leave-channel", x).returncode == 0
    wait_for_peer(b, a.node_id, "B to see that A left x", lambda e: e["channels"] == [])
    other = store_bytes(a, os.urandom(2000), "later.bin")
    assert b.run("load", other, "--timeout", "1").returncode == 3


# ---- a Python-level client against a real daemon --------------------------------------------------


async def _refuse_everything(session: PeerSession, request: messages.Request) -> Any:
    raise RemoteProtocolError("this test client serves nothing", code="not_authorized")


class ProbeClient:
    """Our own QUIC endpoint and identity in this process, dialing a daemon on 127.0.0.1."""

    def __init__(self, identity: NodeIdentity | None = None) -> None:
        self.identity = identity or NodeIdentity.generate()
        self.endpoint = QuicEndpoint(self.identity, on_incoming=lambda link: link.close("not accepting"))

    async def open(self) -> None:
        await self.endpoint.open("127.0.0.1", 0)

    def close(self) -> None:
        self.endpoint.close()

    async def session(
        self, port: int, channels: list[str], expected: str | None = None, label: str = "tester"
    ) -> PeerSession:
        """A fully authenticated session, as a daemon would open it."""
        link = self.endpoint.connect(("127.0.0.1", port))
        session = PeerSession(link, self.identity, label, lambda: list(channels), _refuse_everything, expected)
        await session.authenticate(STEP_TIMEOUT)
        return session

    async def raw(self, port: int) -> tuple[Link, FrameCollector]:
        """A link after the TLS handshake, with the server's challenge stream collected; no proof sent."""
        link = self.endpoint.connect(("127.0.0.1", port))
        challenge = FrameCollector()
        link.on_new_stream = lambda stream_id: challenge if stream_id & 2 else None
        await within(link.handshake)
        return link, challenge


async def within(awaitable: Awaitable[T], timeout: float = STEP_TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


async def raw_request(link: Link, data: bytes) -> dict[str, Any]:
    """Send raw bytes as one request stream; the response header."""
    collector = FrameCollector()
    stream_id = link.open_stream(collector)
    link.send(stream_id, data, end=True)
    return await within(collector.header)


async def request_or_close(link: Link, data: bytes) -> dict[str, Any] | LinkClosed:
    """Like raw_request, but the link closing instead of answering is a result too."""
    try:
        return await raw_request(link, data)
    except LinkClosed as exc:
        return exc


def assert_refused(outcome: dict[str, Any] | LinkClosed, closed: LinkClosed, reason: str) -> None:
    """Refused: no answer but a coded 'unauthenticated' error, and the link closed with the reason."""
    if not isinstance(outcome, LinkClosed):
        assert outcome["ok"] is False and outcome["code"] == "unauthenticated", outcome
    assert closed.code == 1 and reason in closed.reason, closed.reason


@asynccontextmanager
async def probe_client() -> AsyncIterator[ProbeClient]:
    client = ProbeClient()
    await client.open()
    try:
        yield client
    finally:
        client.close()
        await asyncio.sleep(0)  # let the CONNECTION_CLOSE frames leave


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture
def served(daemon_factory: Factory) -> tuple[Daemon, int, str, bytes, str]:
    """Daemon A in one channel with a two-chunk file; (A, udp port, channel, data, uri)."""
    a = daemon_factory.start("alpha", ["-v"])
    channel = unique("served")
    join(a, channel)
    data = os.urandom(CHUNK + 4321)
    uri = store_bytes(a, data, "big.bin")
    assert "?manifest=" in uri
    return a, udp_port(a), channel, data, uri


def test_server_refuses_file_requests_from_a_peer_without_a_shared_channel(
    served: tuple[Daemon, int, str, bytes, str],
) -> None:
    a, port, _channel, _data, uri = served
    sha1 = sha1_of_uri(uri)

    async def scenario() -> list[dict[str, Any]]:
        async with probe_client() as client:
            session = await client.session(port, ["other"], expected=a.node_id)
            assert session.node_id == a.node_id and session.label == "alpha"
            assert session.shared_channels == []
            replies = []
            for header in (
                {"op": "has", "sha1": sha1},
                {"op": "manifest", "sha1": sha1},
                {"op": "get", "sha1": sha1, "start": 0, "end": 100},
            ):
                reply, body = await session.request(header, timeout=STEP_TIMEOUT)
                assert body == b""
                replies.append(reply)
            # The channel exchange itself is allowed, and still proves nothing about "other".
            await within(session.exchange_channels())
            assert session.shared_channels == []
            reply, _ = await session.request({"op": "has", "sha1": sha1}, timeout=STEP_TIMEOUT)
            replies.append(reply)
            return replies

    replies = run(scenario())
    for reply in replies:
        assert reply["ok"] is False and reply["code"] == "not_authorized", reply
    assert a.probe() is not None


def test_server_serves_a_channel_peer(served: tuple[Daemon, int, str, bytes, str]) -> None:
    a, port, channel, data, uri = served
    sha1 = sha1_of_uri(uri)

    async def scenario() -> tuple[dict[str, Any], bytes, bytes, dict[str, Any]]:
        async with probe_client() as client:
            session = await client.session(port, ["unrelated", channel], expected=a.node_id)
            assert session.shared_channels == [channel]
            has, _ = await session.request({"op": "has", "sha1": sha1}, timeout=STEP_TIMEOUT)
            reply, piece = await session.request(
                {"op": "get", "sha1": sha1, "start": CHUNK - 10, "end": CHUNK + 10}, timeout=STEP_TIMEOUT
            )
            assert messages.check_ok(reply)["length"] == 20
            manifest_reply, manifest = await session.request({"op": "manifest", "sha1": sha1}, timeout=60.0)
            messages.check_ok(manifest_reply)
            missing, _ = await session.request({"op": "has", "sha1": "0" * 40}, timeout=STEP_TIMEOUT)
            return has, piece, manifest, missing

    has, piece, manifest, missing = run(scenario())
    assert messages.check_ok(has)["size"] == len(data)
    assert piece == data[CHUNK - 10 : CHUNK + 10]
    parsed = json.loads(manifest)
    assert parsed["sha1"] == sha1 and parsed["size"] == len(data)
    assert [(c["start"], c["end"]) for c in parsed["chunks"]] == [(0, CHUNK), (CHUNK, len(data))]
    assert [c["sha1"] for c in parsed["chunks"]] == [
        hashlib.sha1(data[:CHUNK]).hexdigest(),
        hashlib.sha1(data[CHUNK:]).hexdigest(),
    ]
    assert uri.endswith("?manifest=" + hashlib.sha1(manifest).hexdigest())
    assert missing["ok"] is False and missing["code"] == "not_found"


def test_nothing_is_served_before_the_proof(served: tuple[Daemon, int, str, bytes, str]) -> None:
    a, port, _channel, _data, uri = served
    sha1 = sha1_of_uri(uri)

    async def scenario() -> tuple[dict[str, Any] | LinkClosed, LinkClosed]:
        async with probe_client() as client:
            link, challenge = await client.raw(port)
            messages.parse_challenge(await within(challenge.header))
            outcome = await request_or_close(link, encode_frame({"op": "has", "sha1": sha1}))
            return outcome, await within(link.closed)

    outcome, closed = run(scenario())
    assert_refused(outcome, closed, "must authenticate")
    assert a.probe() is not None


def test_refused_client_gets_the_coded_error_before_the_close(
    served: tuple[Daemon, int, str, bytes, str],
) -> None:
    _a, port, _channel, _data, uri = served

    async def scenario() -> dict[str, Any] | LinkClosed:
        async with probe_client() as client:
            link, challenge = await client.raw(port)
            await within(challenge.header)
            return await request_or_close(link, encode_frame({"op": "has", "sha1": sha1_of_uri(uri)}))

    outcome = run(scenario())
    assert isinstance(outcome, dict), f"no reply, only: {outcome}"
    assert outcome == messages.error("unauthenticated", "the first request must authenticate")


def test_a_replayed_proof_is_refused(served: tuple[Daemon, int, str, bytes, str]) -> None:
    a, port, channel, _data, uri = served
    sha1 = sha1_of_uri(uri)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | LinkClosed, LinkClosed]:
        async with probe_client() as client:
            # Connection 1: an honest proof for the server's nonce N1.
            link1, challenge1 = await client.raw(port)
            server_id = check_peer_certificate(peer_certificate(link1.conn), a.node_id)
            n1 = messages.parse_challenge(await within(challenge1.header)).nonce
            proof = make_auth(client.identity, server_id, n1, "honest", [channel])
            first = await raw_request(link1, encode_frame(proof))
            has = await raw_request(link1, encode_frame({"op": "has", "sha1": sha1}))
            # Connection 2 (what an eavesdropper or a relay could try): the same proof against N2.
            link2, challenge2 = await client.raw(port)
            n2 = messages.parse_challenge(await within(challenge2.header)).nonce
            assert n2 != n1
            replayed = await request_or_close(link2, encode_frame(proof))
            closed = await within(link2.closed)
            link1.close()
            return first, has, replayed, closed

    first, has, replayed, closed = run(scenario())
    assert first["ok"] is True and first["label"] == "alpha"
    assert has["ok"] is True
    assert_refused(replayed, closed, "does not verify")


def test_a_forged_proof_is_refused(served: tuple[Daemon, int, str, bytes, str]) -> None:
    a, port, channel, _data, _uri = served
    victim = NodeIdentity.generate()

    async def scenario() -> tuple[dict[str, Any] | LinkClosed, LinkClosed]:
        async with probe_client() as client:
            link, challenge = await client.raw(port)
            nonce = messages.parse_challenge(await within(challenge.header)).nonce
            # Signed with our key, claiming the victim's id.
            proof = make_auth(client.identity, a.node_id, nonce, "forger", [channel])
            proof["nodeId"] = victim.node_id
            outcome = await request_or_close(link, encode_frame(proof))
            return outcome, await within(link.closed)

    outcome, closed = run(scenario())
    assert_refused(outcome, closed, "does not verify")
    assert peer_entry(a, victim.node_id) is None


def test_client_refuses_a_server_with_another_key(served: tuple[Daemon, int, str, bytes, str]) -> None:
    _a, port, channel, _data, _uri = served
    expected = NodeIdentity.generate().node_id

    async def scenario() -> RemoteProtocolError:
        async with probe_client() as client:
            with pytest.raises(RemoteProtocolError) as info:
                await client.session(port, [channel], expected=expected)
            return info.value

    error = run(scenario())
    assert error.code == "wrong_node_id"
    assert expected[:12] in str(error)


def test_broken_frames_close_only_their_stream(served: tuple[Daemon, int, str, bytes, str]) -> None:
    a, port, channel, data, uri = served
    sha1 = sha1_of_uri(uri)

    async def scenario() -> list[Any]:
        outcomes: list[Any] = []
        async with probe_client() as client:
            session = await client.session(port, [channel], expected=a.node_id)
            for junk in (
                b"\xff\xff\xff\xff" + b"x" * 100,  # header length far above the limit
                b"\x00\x00\x00\x05nope!",  # not JSON
                b"\x00\x00\x00\x02[]",  # not an object
                b"\x00\x00",  # stream ends inside the length
                encode_frame({"op": "dance"}),  # unknown op
                encode_frame({"op": "get", "sha1": sha1, "start": 0, "end": len(data) + 1}),  # past the end
            ):
                try:
                    outcomes.append(await raw_request(session.link, junk))
                except RemoteProtocolError as exc:
                    outcomes.append(exc.code)
            # The same connection still works.
            reply, body = await session.request({"op": "get", "sha1": sha1, "start": 5, "end": 25},
                                                timeout=STEP_TIMEOUT)
            outcomes.append((reply, body))
        return outcomes

    outcomes = run(scenario())
    assert outcomes[:4] == ["stream_reset"] * 4, outcomes
    assert outcomes[4]["ok"] is False and outcomes[4]["code"] == "bad_request"
    assert outcomes[5]["ok"] is False and outcomes[5]["code"] == "bad_request"
    reply, body = outcomes[6]
    assert reply["ok"] is True and body == data[5:25]
    assert a.probe() is not None


# ---- a lying provider: nothing unverified enters the store ------------------------------------------

Reply = tuple[dict[str, Any], AsyncIterator[bytes] | None]


async def _garbage(length: int) -> AsyncIterator[bytes]:
    while length > 0:
        block = min(length, 1 << 20)
        yield b"\x5a" * block
        length -= block


class ThreadedPeer(LoopThread):
    """A peer in this process (its own thread and event loop) that daemons can dial.

    It authenticates like a daemon (PeerSession, server side) and answers with ``handler``; by default
    it claims to have every file and serves bytes of the right length but the wrong content.
    """

    def __init__(self, channels: list[str], sizes: dict[str, int], label: str = "liar") -> None:
        self.identity = NodeIdentity.generate()
        self.channels = channels
        self.sizes = sizes
        self.label = label
        self.port = 0
        self.requests: list[messages.Request] = []
        super().__init__("the in-process peer")

    async def open(self) -> list[Any]:
        endpoint = QuicEndpoint(self.identity, on_incoming=self._on_incoming)
        self.port = (await endpoint.open("127.0.0.1", 0))[1]
        return [endpoint]

    def _on_incoming(self, link: Link) -> None:
        session = PeerSession(link, self.identity, self.label, lambda: list(self.channels), self.handle)

        async def admit() -> None:
            try:
                await session.authenticate()
            except (RemoteProtocolError, LinkClosed):
                return

        task = asyncio.ensure_future(admit())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, session: PeerSession, request: messages.Request) -> Reply:
        self.requests.append(request)
        if not session.shared_channels:
            raise RemoteProtocolError("no shared channel", code="not_authorized")
        if isinstance(request, messages.Has) and request.sha1 in self.sizes:
            return {"ok": True, "size": self.sizes[request.sha1]}, None
        if isinstance(request, messages.GetRange) and request.sha1 in self.sizes:
            length = request.end - request.start
            return {"ok": True, "length": length}, _garbage(length)
        raise RemoteProtocolError("not here", code="not_found")


def content_path(daemon: Daemon, sha1: str) -> Path:
    return Path(daemon.storage_dir) / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def wait_for_channel_peers(daemon: Daemon, node_ids: list[str], channel: str) -> None:
    def ready() -> bool:
        peers = {p["nodeId"]: p for p in daemon.api("get_peers")}
        return all(n in peers and channel in peers[n]["channels"] for n in node_ids)

    wait_until(ready, CONNECT_TIMEOUT, f"{daemon.label} to share {channel} with {len(node_ids)} peers")


def test_bytes_from_a_lying_provider_never_enter_the_store(daemon_factory: Factory) -> None:
    channel = unique("liar")
    data = os.urandom(5_000_000)
    sha1 = hashlib.sha1(data).hexdigest()
    with ThreadedPeer([channel], {sha1: len(data)}) as liar:
        b = daemon_factory.start("beta", ["-v", "--bootstrap", f"{liar.identity.node_id}@127.0.0.1:{liar.port}"])
        join(b, channel)
        wait_for_channel_peers(b, [liar.identity.node_id], channel)
        result = b.run("load", f"sha1://{sha1}/x.bin", "--timeout", "3", timeout=120.0)
        assert any(isinstance(r, messages.GetRange) for r in liar.requests)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("Error:") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "dropping it" in b.log_text() and liar.identity.node_id[:12] in b.log_text()
    assert not content_path(b, sha1).exists()
    # Nothing in the store's content tree holds the garbage either.
    for path in (Path(b.storage_dir) / "sha1").rglob("*") if (Path(b.storage_dir) / "sha1").exists() else []:
        assert not path.is_file() or b"\x5a" * 4096 not in path.read_bytes()[:1 << 20]


def test_an_honest_provider_is_not_banned_for_a_liars_bytes(daemon_factory: Factory, tmp_path: Path) -> None:
    channel = unique("mixed")
    a = daemon_factory.start("alpha", ["-v"])
    join(a, channel)
    # One chunk of five 4 MiB pieces: with four streams per provider, both providers get pieces of it.
    data = os.urandom(19_000_000)
    sha1 = hashlib.sha1(data).hexdigest()
    uri = store_bytes(a, data, "mixed.bin")
    with ThreadedPeer([channel], {sha1: len(data)}) as liar:
        b = daemon_factory.start("beta", [
            "-v",
            "--bootstrap", f"{a.node_id}@127.0.0.1:{udp_port(a)}",
            "--bootstrap", f"{liar.identity.node_id}@127.0.0.1:{liar.port}",
        ])
        join(b, channel)
        wait_for_channel_peers(b, [a.node_id, liar.identity.node_id], channel)
        result = b.run("load", uri, "--timeout", "5", timeout=120.0)
    assert result.returncode == 0, f"{result.stderr}\n--- B's log ---\n{b.log_text()}"
    assert hashlib.sha1(Path(result.stdout.strip()).read_bytes()).hexdigest() == sha1
