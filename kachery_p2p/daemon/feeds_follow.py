"""Following another node's subfeed: one ``feed-subscribe`` stream per source, every line verified.

See ``feeds_peers`` for the protocol. A ``Subscription`` exists while a local reader is interested; it asks
channel peers ``feed-has``, follows the owner (or up to MAX_SOURCES copy holders while no owner answers),
checks each line for stream continuity and the chain before storing, and reports, drops and bans a
source whose log is forged, reordered, truncated (ended or stalled below what it announced) or malformed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from typing import Any, Protocol

from kachery_p2p.daemon.deadline import within

from ..errors import RemoteProtocolError, UsageError
from ..feeds.signing import MAX_SIGNED_BYTES, LogError
from ..quic import messages
from ..quic.frames import encode_frame
from .endpoint import LinkClosed
from .feeds_service import FeedService, SubfeedLog
from .session import FrameCollector, PeerSession


class Peers(Protocol):
    """What a subscription needs of ``feeds_peers.FeedPeers``."""

    service: FeedService
    network: Any
    subscriptions: dict[tuple[str, str], Subscription]

    def unsubscribe(self, session: PeerSession, feed_id: str, subfeed_hash: str) -> None: ...

log = logging.getLogger("kachery_p2p.feeds")

MAX_SOURCES = 3
IDLE_SEC = 300.0
BAN_SEC = 600.0
RECHECK_SEC = 5.0
STALL_SEC = 10.0  # a source below the count it announced that sends nothing this long is truncating its log
LOOP_SEC = 1.0
ASK_TIMEOUT = 5.0


def stall_sec() -> float:
    """STALL_SEC, or KACHERY_P2P_FEED_STALL_SEC (>= 1) to shorten it in tests."""
    try:
        return max(1.0, float(os.environ.get("KACHERY_P2P_FEED_STALL_SEC", STALL_SEC)))
    except ValueError:
        return STALL_SEC


class LineSplitter:
    """Bytes to complete lines, each at most ``max_line`` bytes."""

    def __init__(self, max_line: int) -> None:
        self._buffer = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > self._max:
            raise LogError("malformed", f"a message line longer than {self._max} bytes")
        self._buffer = bytearray(rest)
        return [bytes(line) for line in lines if line]


class Subscription:
    """Our interest in another node's subfeed and the streams that feed it."""

    def __init__(self, peers: Peers, feed_id: str, subfeed_hash: str) -> None:
        self.peers = peers
        self.feed_id, self.subfeed_hash = feed_id, subfeed_hash
        self.wanted_at = time.monotonic()
        self.streams: dict[str, asyncio.Task[None]] = {}
        self.owner_streams: set[str] = set()
        self.refused: dict[str, float] = {}
        self.banned: dict[str, float] = {}
        self.wake = asyncio.Event()
        self.task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        try:
            while time.monotonic() - self.wanted_at < IDLE_SEC:
                self.wake.clear()
                await self._open_streams()
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(self.wake.wait(), LOOP_SEC)
        finally:
            for task in self.streams.values():
                task.cancel()
            key = (self.feed_id, self.subfeed_hash)
            if self.peers.subscriptions.get(key) is self:
                del self.peers.subscriptions[key]

    async def _open_streams(self) -> None:
        """Ask the channel peers we are not following whether they have the subfeed (``feed-has``); follow
        the owner if one answers, else up to MAX_SOURCES copy holders."""
        if self.owner_streams or len(self.streams) >= MAX_SOURCES:
            return
        now = time.monotonic()
        candidates = [
            s for s in self.peers.network.channel_peers()
            if (s.node_id or "") not in self.streams
            and now - self.banned.get(s.node_id or "", -BAN_SEC) >= BAN_SEC
            and now - self.refused.get(s.node_id or "", -RECHECK_SEC) >= RECHECK_SEC
        ]
        if not candidates:
            return
        answers = await asyncio.gather(*(self._has(s) for s in candidates))
        holders = [(s, owner) for s, owner in zip(candidates, answers, strict=True) if owner is not None]
        if any(owner for _s, owner in holders):
            holders = [(s, owner) for s, owner in holders if owner]
        for session, _owner in holders[: MAX_SOURCES - len(self.streams)]:
            node_id = session.node_id or ""
            task = asyncio.ensure_future(self._follow(session, node_id))
            self.streams[node_id] = task
            task.add_done_callback(functools.partial(self._ended, node_id))

    async def _has(self, session: PeerSession) -> bool | None:
        """True: the peer owns the feed; False: it holds a copy; None: neither (or no answer)."""
        header = {"op": "feed-has", "feedId": self.feed_id, "subfeedHash": self.subfeed_hash}
        try:
            reply, _ = await session.request(header, timeout=ASK_TIMEOUT)
            return messages.check_ok(reply).get("owner") is True
        except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, OSError):
            self.refused[session.node_id or ""] = time.monotonic()
            return None

    def _ended(self, node_id: str, _task: asyncio.Task[None]) -> None:
        self.streams.pop(node_id, None)
        self.owner_streams.discard(node_id)
        self.wake.set()

    async def _follow(self, session: PeerSession, node_id: str) -> None:
        service = self.peers.service
        entry = service.acquire(self.feed_id, self.subfeed_hash)
        try:
            await self._follow_entry(session, node_id, entry)
        finally:
            service.release(self.feed_id, self.subfeed_hash, entry)

    async def _follow_entry(self, session: PeerSession, node_id: str, entry: SubfeedLog) -> None:
        service = self.peers.service
        splitter = LineSplitter(MAX_SIGNED_BYTES)
        expected = entry.count
        failed: asyncio.Future[LogError] = asyncio.get_running_loop().create_future()

        last_data = time.monotonic()

        def sink(data: bytes) -> None:
            nonlocal expected, last_data
            last_data = time.monotonic()
            if failed.done():
                return
            batch: list[dict[str, Any]] = []
            try:
                try:
                    for line in splitter.feed(data):
                        signed = _parse_line(line, expected)
                        expected += 1
                        if expected > entry.count:  # older numbers came from another source already
                            batch.append(signed)
                finally:  # what verified before a bad line is kept
                    if batch:
                        service.ingest(self.feed_id, self.subfeed_hash, batch)
            except LogError as exc:
                failed.set_result(exc)
            except UsageError as exc:  # over a subfeed limit
                failed.set_result(LogError("too large", str(exc)))

        collector = FrameCollector(sink)
        link = session.link
        header = {"op": "feed-subscribe", "feedId": self.feed_id, "subfeedHash": self.subfeed_hash,
                  "position": expected}
        try:
            stream_id = link.open_stream(collector)
            link.send(stream_id, encode_frame(header), end=True)
            reply = messages.check_ok(await collector.header)
        except RemoteProtocolError as exc:
            if exc.code != "not_found":
                log.info("peer %s refused to serve subfeed %s: %s", node_id[:12], self.subfeed_hash[:12], exc)
            self.refused[node_id] = time.monotonic()
            return
        except (LinkClosed, OSError):
            return
        announced = reply.get("numMessages")
        if reply.get("owner") is True:
            self.owner_streams.add(node_id)
            for other, task in list(self.streams.items()):
                if other != node_id:
                    task.cancel()
        try:
            waiting: set[asyncio.Future[Any]] = {collector.done, failed}
            stall = stall_sec()
            while not (collector.done.done() or failed.done()):
                await asyncio.wait(waiting, timeout=stall / 4, return_when=asyncio.FIRST_COMPLETED)
                behind = isinstance(announced, int) and expected < announced
                if behind and not failed.done() and time.monotonic() - last_data > stall:
                    raise LogError("truncated", f"announced {announced} messages, sent up to #{expected - 1} and "
                                                f"then nothing for {stall:g} s")
            if failed.done():
                raise failed.result()
            collector.done.result()  # a clean end: the peer must have sent all it announced
            if isinstance(announced, int) and expected < announced:
                raise LogError("truncated", f"announced {announced} messages, ended the stream after #{expected - 1}")
        except LogError as exc:
            service.report_fault(node_id, self.feed_id, self.subfeed_hash, exc)
            self.banned[node_id] = time.monotonic()
            _stop(session, stream_id)
        except asyncio.CancelledError:
            # Ask the peer to end the stream (FIN) rather than stopping it under its feet.
            self.peers.unsubscribe(session, self.feed_id, self.subfeed_hash)
            raise
        except (RemoteProtocolError, LinkClosed, OSError):
            return


def _parse_line(line: bytes, expected: int) -> dict[str, Any]:
    try:
        signed = json.loads(line)
        number = signed["body"]["messageNumber"]
    except (ValueError, KeyError, TypeError):
        raise LogError("malformed", f"message #{expected} is not a signed message") from None
    if number != expected:
        raise LogError("reordered", f"the stream went from #{expected - 1} to #{number}")
    return dict(signed)


def _stop(session: PeerSession, stream_id: int) -> None:
    with contextlib.suppress(Exception):
        session.link.conn.stop_stream(stream_id, 1)
    session.link.reset(stream_id)
