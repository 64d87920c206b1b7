"""Serving files to peers under hostile requests (issue 10 #4 and #9), without a network: the
FileServer is called as a session would call it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from kachery_p2p.daemon.serve import FileServer
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic import messages
from kachery_p2p.store import CHUNK_SIZE, ContentStore


class FakeSession:
    def __init__(self, node_id: str = "p" * 64) -> None:
        self.node_id = node_id
        self.shared_channels = ["c"]


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


def test_failed_manifest_requests_leave_no_lock_entries(store: ContentStore) -> None:
    """#9: 25,000 failed manifest requests left 25,000 lock entries (~250-300 B each)."""
    server = FileServer(store)
    small = store.store_bytes(b"small file").sha1

    async def scenario() -> None:
        session: Any = FakeSession()
        for i in range(500):
            sha1 = hashlib.sha1(str(i).encode()).hexdigest()
            with pytest.raises(RemoteProtocolError):
                await server.handle(session, messages.GetManifest(sha1=sha1))
        with pytest.raises(RemoteProtocolError, match="single chunk"):
            await server.handle(session, messages.GetManifest(sha1=small))

    asyncio.run(scenario())
    assert len(server._manifest_locks) == 0


def test_concurrent_manifest_requests_share_one_computation(store: ContentStore) -> None:
    data = os.urandom(CHUNK_SIZE + 1000)
    sha1 = store.store_bytes(data).sha1
    server = FileServer(store)

    async def scenario() -> list[Any]:
        session: Any = FakeSession()
        return await asyncio.gather(*(server.handle(session, messages.GetManifest(sha1=sha1)) for _ in range(20)))

    replies = asyncio.run(scenario())
    assert {header["length"] for header, _body in replies} == {replies[0][0]["length"]}
    assert len(server._manifest_locks) == 0


class StalledLink:
    """A link whose peer never reads: drain waits forever once anything was sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.resets: list[int] = []
        self.ended = False

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.sent += len(data)
        self.ended = self.ended or end

    async def drain(self, stream_id: int) -> None:
        await asyncio.Event().wait()

    def reset(self, stream_id: int, code: int = 1) -> None:
        self.resets.append(stream_id)


def test_serving_memory_is_bounded_per_peer_and_in_total_and_stalled_streams_time_out(store: ContentStore) -> None:
    """#4: a peer that stops reading held ~4 MB per stalled stream, 64 streams per session and sessions
    free to create: 4 sessions took RSS from 59 to 1,137 MB. Now each stream reserves its window from
    a per-peer and a total budget, busy beyond them; a stalled stream is reset and gives it back."""
    data = os.urandom(8 << 20)
    sha1 = store.store_bytes(data).sha1
    server = FileServer(store)
    budget = server.budget

    async def scenario() -> None:
        peers = [FakeSession(f"{i:x}" * 64) for i in range(12)]
        bodies = []
        busy = 0
        for peer in peers:
            for _ in range(64):
                try:
                    request = messages.GetRange(sha1=sha1, start=0, end=len(data))
                    _header, body = await server.handle(peer, request)  # type: ignore[arg-type]
                except RemoteProtocolError as exc:
                    assert exc.code == "busy"
                    busy += 1
                    continue
                bodies.append(body)
                assert budget.by_peer[peer.node_id] <= budget.per_peer
        assert 64 * len(peers) == len(bodies) + busy
        assert budget.used <= budget.total and busy > 0
        assert len(bodies) * (1 << 20) <= budget.total  # what stalled streams may hold is bounded
        # Every accepted stream stalls: each is reset after the stall timeout, and the memory returns.
        from kachery_p2p.daemon.serve_budget import send_body

        links = [StalledLink() for _ in bodies]
        pairs = enumerate(zip(links, bodies, strict=True))
        sends = [send_body(link, 4 * i, body, stall_timeout=0.2) for i, (link, body) in pairs]
        await asyncio.wait_for(asyncio.gather(*sends), 10)  # type: ignore[arg-type]
        assert all(link.resets and not link.ended for link in links)
        assert budget.used == 0 and budget.by_peer == {}
        # And a new request is served again.
        _header, body = await server.handle(peers[0], messages.GetRange(sha1=sha1, start=0, end=10))  # type: ignore[arg-type]
        assert [block async for block in body] == [data[:10]]  # type: ignore[union-attr]
        assert budget.used == 0

    asyncio.run(scenario())
