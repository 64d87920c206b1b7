"""Providers that answer after a transfer started, through the real Transfers (search, activity, range
reads) with scripted in-memory peers: a late provider is listed by kachery-p2p-transfers while the load
runs, and a range read of proven chunks takes it too."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kachery_p2p.daemon import transfers as transfers_module
from kachery_p2p.daemon.transfers import Transfers
from kachery_p2p.ids import FileUri
from kachery_p2p.store import CHUNK_SIZE, ContentStore

BLOCK = 64 * 1024


class Peer:
    """A peer serving ``files`` (sha1 -> bytes) in 64 KiB blocks ``delay`` s apart; it answers "has" after
    ``answer_after`` seconds."""

    def __init__(self, name: str, files: dict[str, bytes], delay: float, answer_after: float = 0.0) -> None:
        self.node_id = hashlib.sha256(name.encode()).hexdigest()
        self.label = name
        self.files = files
        self.delay = delay
        self.answer_after = answer_after
        self.link = SimpleNamespace(is_closed=False, path=SimpleNamespace(kind="direct"))
        self.sent = 0

    async def request(self, header: dict[str, Any], sink: Callable[[bytes], None] | None = None,
                      timeout: float | None = None) -> tuple[dict[str, Any], bytes]:
        await asyncio.sleep(0)
        data = self.files[header["sha1"]]
        if header["op"] == "has":
            await asyncio.sleep(self.answer_after)
            return {"ok": True, "size": len(data)}, b""
        assert header["op"] == "get"
        body = data[header["start"] : header["end"]]
        if sink is None:
            return {"ok": True, "length": len(body)}, body
        for i in range(0, len(body), BLOCK):
            await asyncio.sleep(self.delay)
            self.sent += len(body[i : i + BLOCK])
            sink(body[i : i + BLOCK])
        return {"ok": True, "length": len(body)}, b""


    async def request_early(self, header: dict[str, Any], timeout: float,
                            max_body: int) -> tuple[dict[str, Any], asyncio.Future[bytes], Callable[[], None]]:
        reply, body = await self.request(header, timeout=timeout)
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        done.set_result(body)
        return reply, done, lambda: None


class Peers:
    def __init__(self, sessions: list[Peer]) -> None:
        self.sessions = sessions
        self.peer_added = asyncio.Event()
        self.connecting: set[str] = set()

    def channel_peers(self) -> list[Peer]:
        return list(self.sessions)

    def session_for(self, node_id: str) -> Peer | None:
        return None


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


def test_a_late_provider_is_listed_by_transfers_while_the_load_runs(store: ContentStore) -> None:
    data = os.urandom(6_000_000)
    sha1 = hashlib.sha1(data).hexdigest()
    early = Peer("early", {sha1: data}, delay=0.02)
    late = Peer("late", {sha1: data}, delay=0.002, answer_after=0.3)

    async def scenario() -> tuple[Path, list[list[str]]]:
        transfers = Transfers(store, Peers([early, late]))  # type: ignore[arg-type]
        listed: list[list[str]] = []

        async def progress(message: dict[str, Any]) -> None:
            return None

        load = asyncio.ensure_future(transfers.load(FileUri.parse(f"sha1://{sha1}"), None, progress))
        while not load.done():
            listed += [d["providers"] for d in transfers.activity.snapshot()["downloads"]]
            await asyncio.sleep(0.02)
        return await load, listed

    path, listed = asyncio.run(scenario())
    assert path.read_bytes() == data
    assert late.sent > 0, "the late provider was never asked for a piece"
    assert listed and listed[0] == [early.node_id]
    # before: the list stayed [early] although the late provider sent most of the file
    assert [early.node_id, late.node_id] in listed, listed[-1]


def test_a_range_read_takes_a_provider_that_answers_late(tmp_path: Path, store: ContentStore) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 1000)  # three chunks: the range of one is fetched alone
    provider_store = ContentStore(tmp_path / "source")
    source = provider_store.store_bytes(data)
    assert source.manifest_sha1 is not None
    files = {source.sha1: data, source.manifest_sha1: provider_store.content_path(source.manifest_sha1).read_bytes()}
    early = Peer("early", files, delay=0.05)
    late = Peer("late", files, delay=0.001, answer_after=0.3)
    uri = FileUri.parse(f"sha1://{source.sha1}?manifest={source.manifest_sha1}")
    start, end = CHUNK_SIZE + 10, CHUNK_SIZE + 5_000_000

    async def scenario() -> bytes:
        transfers = Transfers(store, Peers([early, late]))  # type: ignore[arg-type]
        length, stream = await transfers.read_remote_range(uri, start, end, None)
        assert length == end - start
        return b"".join([block async for block in stream])

    got = asyncio.run(scenario())
    assert got == data[start:end]
    # before: the late provider was never used, and the early one sent the whole chunk (~20 s here)
    assert late.sent > early.sent, (late.sent, early.sent)


def test_a_failure_of_the_task_adding_late_providers_is_logged_not_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("the search broke")

    async def waiting() -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        failed = asyncio.ensure_future(broken())
        await asyncio.sleep(0)
        await transfers_module._stop_feeder(failed)  # failed before it was stopped
        await transfers_module._stop_feeder(asyncio.ensure_future(waiting()))  # stopped while waiting: not an error
        await transfers_module._stop_feeder(None)

    with caplog.at_level("ERROR", logger="kachery_p2p.transfers"):
        asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "late providers" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "the search broke" in str(errors[0].exc_info[1])
