"""A hostile peer serving a feed: forged, reordered and truncated logs are detected, dropped and reported.

The peer runs in this process (its own thread and event loop) and authenticates like a daemon; it holds
the feed's key, so it can sign whatever it likes, and serves a real daemon B the lines a test gives it.
B must store only the valid prefix, name the peer and the kind of fault, and not ask it again.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import environ_applied
from helpers import LoopThread, peer_entry, wait_until

import kachery_p2p as kp
from kachery_p2p.client.feeds import feed_faults
from kachery_p2p.daemon.endpoint import Link, LinkClosed, QuicEndpoint
from kachery_p2p.daemon.session import PeerSession
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.feeds.names import subfeed_hash
from kachery_p2p.feeds.signing import FeedKey, canonical_json, sign_message
from kachery_p2p.quic import messages
from kachery_p2p.quic.identity import NodeIdentity

Reply = tuple[dict[str, Any], AsyncIterator[bytes] | None]
SUB = subfeed_hash("main")


class FeedLiar(LoopThread):
    """Answers ``feed-subscribe`` with ``announced`` and ``lines``; ends the stream if ``end``."""

    def __init__(self, channel: str, feed_id: str, lines: list[dict[str, Any]], announced: int, end: bool) -> None:
        self.identity = NodeIdentity.generate()
        self.channel, self.feed_id, self.lines, self.announced, self.end = channel, feed_id, lines, announced, end
        self.port = 0
        self.subscribes = 0
        super().__init__("the feed liar")

    async def open(self) -> list[Any]:
        endpoint = QuicEndpoint(self.identity, on_incoming=self._on_incoming)
        self.port = (await endpoint.open("127.0.0.1", 0))[1]
        return [endpoint]

    def _on_incoming(self, link: Link) -> None:
        session = PeerSession(link, self.identity, "liar", lambda: [self.channel], self.handle)

        async def admit() -> None:
            try:
                await session.authenticate()
            except (RemoteProtocolError, LinkClosed):
                return

        task = asyncio.ensure_future(admit())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, session: PeerSession, request: messages.Request) -> Reply:
        if isinstance(request, messages.FeedHas) and request.feed_id == self.feed_id:
            return {"ok": True, "owner": True, "numMessages": self.announced}, None
        if isinstance(request, messages.FeedSubscribe) and request.feed_id == self.feed_id:
            self.subscribes += 1
            return {"ok": True, "owner": True, "numMessages": self.announced}, self._body(session)
        raise RemoteProtocolError("not here", code="not_found")

    async def _body(self, session: PeerSession) -> AsyncIterator[bytes]:
        yield b"".join(canonical_json(line) + b"\n" for line in self.lines)
        if not self.end:
            await session.link.closed


def make_log(key: FeedKey, n: int) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = []
    for i in range(n):
        log.append(sign_message(key, SUB, i, log[-1]["signature"] if log else None, {"i": i}, 1_700_000_000_000))
    return log


def forged(key: FeedKey) -> tuple[list[dict[str, Any]], int, bool]:
    log = make_log(key, 4)
    bad = json.loads(json.dumps(log[2]))
    bad["body"]["message"] = {"i": "forged"}
    return [log[0], log[1], bad, log[3]], 4, False


def reordered(key: FeedKey) -> tuple[list[dict[str, Any]], int, bool]:
    log = make_log(key, 4)
    return [log[0], log[1], log[3], log[2]], 4, False


def truncated(key: FeedKey) -> tuple[list[dict[str, Any]], int, bool]:
    return make_log(key, 2), 6, True  # ends the stream after #1, having announced 6


def stalled(key: FeedKey) -> tuple[list[dict[str, Any]], int, bool]:
    return make_log(key, 2), 6, False  # keeps the stream open but never sends #2..#5 (for STALL_SEC: 2 s below)


@pytest.mark.parametrize(
    ("make", "kind"), [(forged, "forged"), (reordered, "reordered"), (truncated, "truncated"), (stalled, "truncated")]
)
def test_a_bad_log_is_refused_and_reported(daemon_factory: Any, make: Any, kind: str) -> None:
    key = FeedKey.generate()
    channel = f"hostile-{os.urandom(6).hex()}"
    lines, announced, end = make(key)
    with FeedLiar(channel, key.feed_id, lines, announced, end) as liar:
        b = daemon_factory.new("fb")
        if make is stalled:
            b.env["KACHERY_P2P_FEED_STALL_SEC"] = "2"  # found after 2 s of silence, not the daemon's 10
        b.start(["-v", "--bootstrap", f"{liar.identity.node_id}@127.0.0.1:{liar.port}"])
        assert b.run("join-channel", channel).returncode == 0
        wait_until(lambda: (e := peer_entry(b, liar.identity.node_id)) is not None and channel in e["channels"],
                   30, "B to share the channel with the liar")
        with environ_applied(b.env):
            subfeed = kp.load_subfeed(f"feed://{key.feed_id}/main")
            def faults() -> list[dict[str, Any]]:
                subfeed.get_next_messages(wait_msec=200, advance_position=False)  # a reader keeps B subscribed
                return feed_faults()

            [fault] = wait_until(faults, 30, f"B to report the {kind} log")
            assert fault["peer"] == liar.identity.node_id and fault["kind"] == kind
            assert fault["feedId"] == key.feed_id and fault["subfeedHash"] == SUB
            # Only the valid prefix was stored, with its signatures as the owner made them.
            assert subfeed.get_next_messages(wait_msec=0) == [{"i": 0}, {"i": 1}]
            assert subfeed.get_num_local_messages() == 2
            # The liar is not asked again (for this subfeed) however long B keeps reading.
            subscribes = liar.subscribes
            subfeed.get_next_messages(wait_msec=1500)
            assert liar.subscribes == subscribes
        assert f"sent a {kind} log" in b.log_text() and liar.identity.node_id[:12] in b.log_text()
        listed = b.run("feeds")
        assert listed.returncode == 0 and f"refused a {kind} log" in listed.stderr
        assert liar.identity.node_id in listed.stderr
