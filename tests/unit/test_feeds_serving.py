"""Serving feeds to peers without a network: channel check, owner-only submission, subscriptions per peer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kachery_p2p.daemon.feeds_follow import LineSplitter
from kachery_p2p.daemon.feeds_peers import MAX_SUBSCRIPTIONS_PER_PEER, FeedPeers
from kachery_p2p.daemon.feeds_service import FeedService
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.feeds.names import subfeed_hash
from kachery_p2p.feeds.signing import LogError
from kachery_p2p.quic import messages

SUB = subfeed_hash("main")


def fake_session(node_id: str, channels: list[str]) -> Any:
    loop = asyncio.get_running_loop()
    link = SimpleNamespace(closed=loop.create_future(), is_closed=False)
    return SimpleNamespace(node_id=node_id, shared_channels=channels, link=link)


async def setup(tmp_path: Path) -> tuple[FeedService, FeedPeers, str]:
    service = FeedService(tmp_path, "00" * 32)
    peers = FeedPeers(service, SimpleNamespace(request_handlers={}, channel_peers=list, session_for=lambda n: None))
    service.peers = peers
    feed_id = service.create_feed("f")
    await service.append(feed_id, SUB, [{"n": 1}, {"n": 2}])
    return service, peers, feed_id


def test_subscriptions_are_bounded_per_peer_and_released(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, peers, feed_id = await setup(tmp_path)
        peer = fake_session("aa" * 32, ["ch"])
        bodies = []
        for _ in range(MAX_SUBSCRIPTIONS_PER_PEER):
            reply, body = await peers.handle(peer, messages.FeedSubscribe(feed_id, SUB, 0))
            assert reply == {"ok": True, "owner": True, "numMessages": 2} and body is not None
            bodies.append(body)
        with pytest.raises(RemoteProtocolError) as refused:
            await peers.handle(peer, messages.FeedSubscribe(feed_id, SUB, 0))
        assert refused.value.code == "busy"
        # Another peer is not affected; a stream sends the log, then each new message.
        other = fake_session("bb" * 32, ["ch"])
        _, body = await peers.handle(other, messages.FeedSubscribe(feed_id, SUB, 1))
        assert body is not None
        first = await body.__anext__()
        assert first.count(b"\n") == 1 and b'"messageNumber":1' in first
        pending = asyncio.ensure_future(body.__anext__())
        await asyncio.sleep(0)
        await service.append(feed_id, SUB, [{"n": 3}])
        assert b'"messageNumber":2' in await asyncio.wait_for(pending, 2)
        # Ending a stream frees its slot.
        await bodies[0].aclose()
        reply, _ = await peers.handle(peer, messages.FeedSubscribe(feed_id, SUB, 0))
        assert reply["ok"]
        service.close()

    asyncio.run(scenario())


def test_peers_without_a_shared_channel_or_rules_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, peers, feed_id = await setup(tmp_path)
        stranger = fake_session("cc" * 32, [])
        with pytest.raises(RemoteProtocolError) as exc:
            await peers.handle(stranger, messages.FeedHas(feed_id, SUB))
        assert exc.value.code == "not_authorized"
        peer = fake_session("dd" * 32, ["ch"])
        with pytest.raises(RemoteProtocolError) as exc:
            await peers.handle(peer, messages.FeedSubmit(feed_id, SUB, {"x": 1}))
        assert exc.value.code == "not_authorized"
        service.set_access_rules(feed_id, SUB, {"rules": [{"nodeId": "dd" * 32, "write": True}]})
        reply, _ = await peers.handle(peer, messages.FeedSubmit(feed_id, SUB, {"x": 1}))
        assert reply == {"ok": True, "messageNumber": 2}
        with pytest.raises(RemoteProtocolError) as exc:
            await peers.handle(peer, messages.FeedSubmit(feed_id, SUB, {"x": "y" * 20_000}))
        assert exc.value.code == "bad_request"
        with pytest.raises(RemoteProtocolError) as exc:
            await peers.handle(peer, messages.FeedHas("ee" * 32, SUB))
        assert exc.value.code == "not_found"
        service.close()

    asyncio.run(scenario())


def test_line_splitter_bounds_lines() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"abc\nde") == [b"abc"]
    assert splitter.feed(b"f\n\n") == [b"def"]
    with pytest.raises(LogError):
        splitter.feed(b"x" * 11)


def test_feed_requests_parse_and_reject_bad_fields() -> None:
    parsed = messages.parse_request({"op": "feed-subscribe", "feedId": "ab" * 32, "subfeedHash": SUB, "position": 3})
    assert parsed == messages.FeedSubscribe("ab" * 32, SUB, 3)
    for bad in [
        {"op": "feed-subscribe", "feedId": "ab" * 32, "subfeedHash": SUB, "position": -1},
        {"op": "feed-has", "feedId": "xyz", "subfeedHash": SUB},
        {"op": "feed-submit", "feedId": "ab" * 32, "subfeedHash": SUB, "message": [1]},
    ]:
        with pytest.raises(RemoteProtocolError):
            messages.parse_request(bad)


def test_peers_naming_empty_subfeeds_leave_nothing_behind(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, peers, feed_id = await setup(tmp_path)
        peer = fake_session("aa" * 32, ["ch"])
        opened = len(service._logs)
        for i in range(200):
            reply, _ = await peers.handle(peer, messages.FeedHas(feed_id, f"{i:040x}"))
            assert reply["numMessages"] == 0
        _, body = await peers.handle(peer, messages.FeedSubscribe(feed_id, "f" * 40, 0))
        assert body is not None and len(service._logs) == opened + 1
        await body.aclose()
        assert len(service._logs) == opened
        # A local reader waiting on an empty subfeed still gets woken by the first append.
        waiter = asyncio.ensure_future(service.watch({"w": {"feedId": feed_id, "subfeedHash": "e" * 40}}, 5000,
                                                     False, 0))
        await asyncio.sleep(0.05)
        _, body = await peers.handle(peer, messages.FeedSubscribe(feed_id, "e" * 40, 0))
        assert body is not None
        await body.aclose()
        await service.append(feed_id, "e" * 40, [{"first": True}])
        assert (await asyncio.wait_for(waiter, 2))["w"] == [{"first": True}]
        service.close()

    asyncio.run(scenario())


def test_unsubscribe_ends_the_stream_and_a_new_subscription_replaces_the_old(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, peers, feed_id = await setup(tmp_path)
        peer = fake_session("aa" * 32, ["ch"])
        _, first = await peers.handle(peer, messages.FeedSubscribe(feed_id, SUB, 0))
        assert first is not None and b'"messageNumber":1' in await first.__anext__()
        _, second = await peers.handle(peer, messages.FeedSubscribe(feed_id, SUB, 2))
        assert second is not None
        with pytest.raises(StopAsyncIteration):  # replaced: the old stream ends (FIN)
            await asyncio.wait_for(first.__anext__(), 2)
        pending = asyncio.ensure_future(second.__anext__())
        await asyncio.sleep(0)
        assert await peers.handle(peer, messages.FeedUnsubscribe(feed_id, SUB)) == ({"ok": True}, None)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, 2)
        assert peers._serving == {}
        service.close()

    asyncio.run(scenario())
