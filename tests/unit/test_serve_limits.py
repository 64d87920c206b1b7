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
