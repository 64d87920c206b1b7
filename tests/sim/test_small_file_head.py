"""A file's first bytes come with a provider's answer to "has" (messages.HEAD_MAX): a small load takes one
round trip to the provider instead of two (has, then get), and a larger file's first piece is here a round
trip earlier. Real sessions and FileServer over the in-memory network; a whole small file is used only if its
sha1 checks out, a larger file's first bytes only as a piece verified with its chunk, and servers or clients
that do not know "head" work as before."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_session_sim import TIMEOUT, FakeNet, make_nodes, no_progress, run

from kachery_p2p.daemon.download import Download, Provider
from kachery_p2p.daemon.download_head import store_head
from kachery_p2p.daemon.transfers import Transfers
from kachery_p2p.ids import FileUri
from kachery_p2p.quic import messages
from kachery_p2p.store import ManifestBuilder


def test_a_small_file_is_stored_from_the_answer_to_has_without_a_get(tmp_path: Path) -> None:
    net = FakeNet(random.Random(1))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    data = os.urandom(1000)
    stored = a.store.store_bytes(data)
    uri = FileUri.parse(f"sha1://{stored.sha1}/small.bin")
    messages_seen: list[dict[str, Any]] = []

    async def scenario() -> Path | None:
        try:
            session = await b.dial(a)
            transfers = Transfers(b.store, SimpleNamespace(session_for=lambda node_id: None))  # type: ignore[arg-type]
            provider = await transfers._ask(session, stored.sha1, TIMEOUT, messages.HEAD_MAX)
            assert provider is not None and provider.head == data

            async def progress(message: dict[str, Any]) -> None:
                messages_seen.append(message)

            return await store_head(b.store, Download(b.store, uri, [provider], progress))
        finally:
            a.close()
            b.close()

    path = run(scenario)
    assert path == b.store.content_path(stored.sha1) and path.read_bytes() == data
    assert a.server.bytes_served == len(data)  # sent once, with the answer: no "get" followed
    assert messages_seen and messages_seen[-1]["bytesLoaded"] == messages_seen[-1]["bytesTotal"] == len(data)


def test_the_server_sends_the_first_bytes_only_when_asked_and_at_most_head_max(tmp_path: Path) -> None:
    net = FakeNet(random.Random(2))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    small = a.store.store_bytes(os.urandom(500))
    big = a.store.store_bytes(os.urandom(messages.HEAD_MAX + 1))

    async def scenario() -> list[tuple[dict[str, Any], bytes]]:
        try:
            session = await b.dial(a)
            asks = [
                {"op": "has", "sha1": small.sha1},  # a client that does not know "head" (or a search: find)
                {"op": "has", "sha1": small.sha1, "head": 100},  # asks for less than the file
                {"op": "has", "sha1": big.sha1, "head": 10**9},  # capped at HEAD_MAX
                {"op": "has", "sha1": small.sha1, "head": messages.HEAD_MAX},
            ]
            return [await session.request(ask, timeout=TIMEOUT) for ask in asks]
        finally:
            a.close()
            b.close()

    plain, first_100, capped, whole = run(scenario)
    assert plain[0]["ok"] and "head" not in plain[0] and plain[1] == b""
    assert first_100[0]["head"] == 100 and first_100[1] == a.store.content_path(small.sha1).read_bytes()[:100]
    big_bytes = a.store.content_path(big.sha1).read_bytes()
    assert capped[0]["head"] == messages.HEAD_MAX and capped[1] == big_bytes[: messages.HEAD_MAX]
    assert whole[0]["head"] == 500 and whole[1] == a.store.content_path(small.sha1).read_bytes()
    assert a.server.budget.used == 0  # what was reserved to send them is back


def _spy(node: Any, requests: list[messages.Request], head_bytes: Callable[[bytes], bytes] | None = None,
         on_get: Callable[[], None] = lambda: None) -> None:
    """Record the requests ``node`` serves; with ``head_bytes``, replace what it sends with "has"."""
    serve = node.server.handle

    async def spy(session: Any, request: messages.Request) -> Any:
        requests.append(request)
        if isinstance(request, messages.GetRange):
            on_get()
        reply, blocks = await serve(session, request)
        if head_bytes is not None and isinstance(request, messages.Has) and blocks is not None:
            sent = b"".join([block async for block in blocks])
            return reply, _blocks(head_bytes(sent))
        return reply, blocks

    node.server.handle = spy


async def _blocks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize("manifest", [False, True])
def test_a_larger_files_first_bytes_are_its_first_piece_and_never_fetched_again(tmp_path: Path, manifest: bool) -> None:
    """The first HEAD_MAX bytes come with the answer to "has"; the download asks only for the rest, and the
    provider sends no byte twice. The answer is used as soon as its header is here: the other pieces are
    asked for while those first bytes still stream in (a 40 ms round trip, a fresh connection's window: they
    take several). With a URI manifest of small chunks, the first chunk is the head plus what follows it."""
    net = FakeNet(random.Random(5), delay=0.02)
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    data = random.Random(5).randbytes(600_000)
    stored = a.store.store_bytes(data)
    uri = FileUri.parse(f"sha1://{stored.sha1}/x")
    if manifest:  # four chunks of 192 KiB (the first is the head and pieces after it), the manifest stored in A
        builder = ManifestBuilder(192 * 1024)
        builder.update(data)
        built = builder.finish()[1]
        assert built is not None
        uri = FileUri.parse(f"sha1://{stored.sha1}/x?manifest={a.store.store_bytes(built.to_json_bytes()).sha1}")
    requests: list[messages.Request] = []
    events: list[str] = []
    _spy(a, requests, on_get=lambda: events.append("a get served"))

    async def scenario() -> tuple[Path, Download]:
        try:
            session = await b.dial(a)
            transfers = Transfers(b.store, SimpleNamespace(session_for=lambda node_id: None))  # type: ignore[arg-type]
            provider = await transfers._ask(session, stored.sha1, TIMEOUT, messages.HEAD_MAX)
            assert provider is not None and provider.head is None and provider.head_coming is not None
            coming = provider.head_coming
            assert coming.size == messages.HEAD_MAX and not coming.body.done()  # the answer, not yet its bytes
            coming.body.add_done_callback(lambda _body: events.append("first bytes here"))
            download = Download(b.store, uri, [provider], no_progress)
            assert await store_head(b.store, download) is None  # not a whole file: a piece
            path = await download.run()
            assert coming.body.result() == data[: messages.HEAD_MAX]
            return path, download
        finally:
            a.close()
            b.close()

    path, download = run(scenario)
    assert path == b.store.content_path(stored.sha1) and path.read_bytes() == data
    gets = [r for r in requests if isinstance(r, messages.GetRange) and r.sha1 == stored.sha1]
    assert gets and min(r.start for r in gets) == messages.HEAD_MAX
    assert sum(r.end - r.start for r in gets) == len(data) - messages.HEAD_MAX
    assert download.bytes_received == len(data) and not download.bad_providers
    assert events.index("a get served") < events.index("first bytes here")


def test_first_bytes_that_lie_are_charged_to_their_provider_and_the_file_comes_right(tmp_path: Path) -> None:
    """A provider whose answer to "has" carries other bytes (its pieces are honest): the first chunk fails,
    is fetched again from one provider, and the liar is found and dropped; nothing false is stored."""
    net = FakeNet(random.Random(6))
    liar, honest, b = make_nodes(tmp_path, net, ("liar", ["lab"]), ("honest", ["lab"]), ("b", ["lab"]))
    data = random.Random(6).randbytes(700_000)
    stored = liar.store.store_bytes(data)
    honest.store.store_bytes(data)
    _spy(liar, [], head_bytes=lambda sent: bytes(255 - x for x in sent))

    async def scenario() -> tuple[Path, Download]:
        try:
            sessions = [await b.dial(liar), await b.dial(honest)]
            transfers = Transfers(b.store, SimpleNamespace(session_for=lambda node_id: None))  # type: ignore[arg-type]
            providers = [await transfers._ask(s, stored.sha1, TIMEOUT, messages.HEAD_MAX) for s in sessions]
            assert all(p is not None and p.head_coming is not None for p in providers)
            download = Download(b.store, FileUri.parse(f"sha1://{stored.sha1}/x"), providers, no_progress)  # type: ignore[arg-type]
            return await download.run(), download
        finally:
            for node in (liar, honest, b):
                node.close()

    path, download = run(scenario)
    assert path.read_bytes() == data
    assert download.bad_providers == [liar.identity.node_id]


def test_first_bytes_other_than_announced_are_not_used_and_fetched_again(tmp_path: Path) -> None:
    """A provider that sends one byte more than its answer's "head" says: a whole small file that is not
    used (its length is wrong), a larger file's first piece that is fetched again; the file comes right."""
    net = FakeNet(random.Random(7))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    data = os.urandom(5000)
    stored = a.store.store_bytes(data)
    requests: list[messages.Request] = []
    _spy(a, requests, head_bytes=lambda sent: sent + b"x")

    async def scenario() -> tuple[list[Provider | None], Path]:
        try:
            session = await b.dial(a)
            transfers = Transfers(b.store, SimpleNamespace(session_for=lambda node_id: None))  # type: ignore[arg-type]
            asked = [await transfers._ask(session, stored.sha1, TIMEOUT, head) for head in (0, messages.HEAD_MAX)]
            prefix = await transfers._ask(session, stored.sha1, TIMEOUT, 100)
            assert prefix is not None and prefix.head_coming is not None and prefix.head_coming.size == 100
            download = Download(b.store, FileUri.parse(f"sha1://{stored.sha1}/x"), [prefix], no_progress)
            return asked, await download.run()
        finally:
            a.close()
            b.close()

    asked, path = run(scenario)
    for provider in asked:
        assert provider is not None and provider.size == 5000 and provider.head is None
        assert provider.head_coming is None
    assert path.read_bytes() == data
    # the rest was asked for at once; the first 100 bytes again once they came wrong
    assert sorted((r.start, r.end) for r in requests if isinstance(r, messages.GetRange)) == [(0, 100), (100, 5000)]


def test_a_head_that_does_not_verify_is_never_stored(tmp_path: Path) -> None:
    data = os.urandom(800)
    store = make_nodes(tmp_path, FakeNet(random.Random(3)), ("b", ["lab"]))[0].store
    sha1 = hashlib.sha1(data).hexdigest()
    liar = SimpleNamespace(node_id="ab" * 32, link=SimpleNamespace(path=SimpleNamespace(kind="direct")))
    provider = Provider(liar, len(data), None, os.urandom(len(data)))  # type: ignore[arg-type]
    download = Download(store, FileUri.parse(f"sha1://{sha1}/x"), [provider], no_progress)

    async def scenario() -> Path | None:
        return await store_head(store, download)

    assert run(scenario) is None
    assert download.bad_providers == [liar.node_id]
    assert not store.content_path(sha1).exists()
    assert not [p for p in store.root.rglob("*") if p.is_file() and p.stat().st_size == len(data)]


def test_a_search_right_after_a_join_waits_for_the_peer_to_learn_of_it(tmp_path: Path) -> None:
    """B joins A's channel and searches at once: A may still refuse ("we share no channel") because B's
    channel update has not reached it. Before, B concluded A did not have the file (the WAN bench's 80 ms,
    0.5 % loss row failed once that way); now B waits for its update to be answered and asks again."""
    net = FakeNet(random.Random(4))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", []))
    stored = a.store.store_bytes(os.urandom(3000))

    async def scenario() -> Provider | None:
        try:
            session = await b.dial(a)
            assert session.shared_channels == []
            transfers = Transfers(b.store, SimpleNamespace(session_for=lambda node_id: None))  # type: ignore[arg-type]
            b.channels.append("lab")
            ask = asyncio.ensure_future(transfers._ask(session, stored.sha1, TIMEOUT))  # sent before the update
            update = asyncio.ensure_future(session.exchange_channels())
            provider = await ask
            await update
            return provider
        finally:
            a.close()
            b.close()

    provider = run(scenario)
    assert provider is not None and provider.size == 3000
