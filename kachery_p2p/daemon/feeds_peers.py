"""Feeds between channel peers over the existing QUIC sessions (requests in ``quic.messages``).

Reading another node's subfeed: we open a ``feed-subscribe`` stream to the owner (or, while no owner is
reachable, to up to MAX_SOURCES channel peers holding a copy) from our local count. The peer answers with
its count, sends what we lack, then keeps the stream open and writes each new message as it is appended:
no polling over the network. Every line is checked to continue the stream (number) and our log (number,
previous signature, subfeed, signature) before it is stored; a peer whose stream breaks the chain is
reported, its stream dropped and the peer not asked again for that subfeed for BAN_SEC. Interest in a
subfeed lasts IDLE_SEC after the last local reader; then the streams are closed.

Serving: channel peers only; at most MAX_SUBSCRIPTIONS_PER_PEER open subscriptions per peer. A
``feed-submit`` is accepted by the owner only, from nodes the subfeed's access rules allow to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..errors import FeedPermissionError, NotFoundError, RemoteProtocolError, UsageError
from ..feeds.names import MAX_SUBMIT_CHARS, check_message
from ..feeds.signing import MAX_SIGNED_BYTES, LogError
from ..quic import messages
from ..quic.frames import encode_frame
from .endpoint import LinkClosed
from .feeds_service import FeedService, SubfeedLog
from .session import FrameCollector, PeerSession

log = logging.getLogger("kachery_p2p.feeds")

Reply = tuple[dict[str, Any], AsyncIterator[bytes] | None]
MAX_SUBSCRIPTIONS_PER_PEER = 32
MAX_LOCAL_SUBSCRIPTIONS = 256
MAX_SOURCES = 3
IDLE_SEC = 300.0
BAN_SEC = 600.0
RECHECK_SEC = 5.0
STALL_SEC = 10.0  # a source below the count it announced that sends nothing this long is truncating its log
LOOP_SEC = 1.0
SERVE_BATCH = 500
OWNER_TIMEOUT = 5.0
SUBMIT_TIMEOUT = 10.0


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

    def __init__(self, peers: FeedPeers, feed_id: str, subfeed_hash: str) -> None:
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
                    await asyncio.wait_for(self.wake.wait(), LOOP_SEC)
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
            reply, _ = await session.request(header, timeout=OWNER_TIMEOUT)
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
            while not (collector.done.done() or failed.done()):
                await asyncio.wait(waiting, timeout=STALL_SEC / 4, return_when=asyncio.FIRST_COMPLETED)
                behind = isinstance(announced, int) and expected < announced
                if behind and not failed.done() and time.monotonic() - last_data > STALL_SEC:
                    raise LogError("truncated", f"announced {announced} messages, sent up to #{expected - 1} and "
                                                f"then nothing for {STALL_SEC:g} s")
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
            _stop(session, stream_id)
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


class FeedPeers:
    def __init__(self, service: FeedService, network: Any) -> None:
        self.service = service
        self.network = network
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self._serving: dict[str, int] = {}
        self._owners: dict[str, str] = {}
        for kind in (messages.FeedHas, messages.FeedSubscribe, messages.FeedSubmit):
            network.request_handlers[kind] = self.handle

    def stop(self) -> None:
        for subscription in list(self.subscriptions.values()):
            subscription.task.cancel()

    def forget(self, feed_id: str) -> None:
        """Stop following a deleted feed."""
        for (feed, _subfeed), subscription in list(self.subscriptions.items()):
            if feed == feed_id:
                subscription.task.cancel()
                del self.subscriptions[(feed, _subfeed)]

    def info(self) -> dict[str, Any]:
        return {
            "subscriptions": [{"feedId": f, "subfeedHash": s, "sources": sorted(sub.streams)}
                              for (f, s), sub in self.subscriptions.items()],
            "serving": dict(self._serving),
        }

    # -- reading other nodes' feeds ---------------------------------------------------------------
    def want(self, feed_id: str, subfeed_hash: str) -> None:
        """A local reader waits on this subfeed: follow it live (again) for IDLE_SEC."""
        key = (feed_id, subfeed_hash)
        subscription = self.subscriptions.get(key)
        if subscription is not None and not subscription.task.done():
            subscription.wanted_at = time.monotonic()
            return
        if len(self.subscriptions) >= MAX_LOCAL_SUBSCRIPTIONS:
            oldest = min(self.subscriptions.values(), key=lambda s: s.wanted_at)
            oldest.task.cancel()
            self.subscriptions.pop((oldest.feed_id, oldest.subfeed_hash), None)
        if not self.service.store.has_feed(feed_id):
            self.service.store.add_remote_feed(feed_id)
        self.subscriptions[key] = Subscription(self, feed_id, subfeed_hash)

    # -- submitting to another node's feed --------------------------------------------------------
    async def submit(self, feed_id: str, subfeed_hash: str, message: dict[str, Any]) -> int:
        check_message(message, MAX_SUBMIT_CHARS)
        session = await self._owner_session(feed_id, subfeed_hash)
        header = {"op": "feed-submit", "feedId": feed_id, "subfeedHash": subfeed_hash, "message": message}
        try:
            reply, _ = await session.request(header, timeout=SUBMIT_TIMEOUT)
            number = messages.check_ok(reply).get("messageNumber")
        except RemoteProtocolError as exc:
            if exc.code == "not_authorized":
                raise FeedPermissionError(f"the owner of feed {feed_id[:12]}... refused the message: {exc}") from None
            raise
        except (LinkClosed, asyncio.TimeoutError):
            raise NotFoundError(f"lost the owner of feed {feed_id[:12]}... while submitting") from None
        return int(number) if isinstance(number, int) else -1

    async def _owner_session(self, feed_id: str, subfeed_hash: str) -> PeerSession:
        known = self._owners.get(feed_id)
        session = self.network.session_for(known) if known else None
        if session is not None:
            return session
        header = {"op": "feed-has", "feedId": feed_id, "subfeedHash": subfeed_hash}

        async def ask(candidate: PeerSession) -> PeerSession | None:
            try:
                reply, _ = await candidate.request(header, timeout=OWNER_TIMEOUT)
                return candidate if messages.check_ok(reply).get("owner") is True else None
            except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError):
                return None

        for answer in asyncio.as_completed([ask(s) for s in self.network.channel_peers()]):
            found = await answer
            if found is not None:
                self._owners[feed_id] = found.node_id or ""
                return found
        raise NotFoundError(f"no channel peer owns feed {feed_id[:12]}...")

    # -- serving --------------------------------------------------------------------------------------
    async def handle(self, session: PeerSession, request: Any) -> Reply:
        if not session.shared_channels:
            raise RemoteProtocolError("we share no channel", code="not_authorized")
        service = self.service
        feed_id, subfeed_hash = request.feed_id, request.subfeed_hash
        if not service.store.has_feed(feed_id):
            raise RemoteProtocolError("no such feed here", code="not_found")
        owner = service.is_owner(feed_id)
        if isinstance(request, messages.FeedHas):
            return {"ok": True, "owner": owner, "numMessages": service.peek_count(feed_id, subfeed_hash)}, None
        if isinstance(request, messages.FeedSubmit):
            if not owner:
                raise RemoteProtocolError("this node does not own the feed", code="not_found")
            if not service.may_submit(feed_id, subfeed_hash, session.node_id or ""):
                raise RemoteProtocolError("permission denied by the subfeed's access rules", code="not_authorized")
            try:
                check_message(request.message, MAX_SUBMIT_CHARS)
                count = await service.append(feed_id, subfeed_hash, [request.message])
            except UsageError as exc:
                raise RemoteProtocolError(str(exc), code="bad_request") from None
            return {"ok": True, "messageNumber": count - 1}, None
        node_id = session.node_id or ""
        if self._serving.get(node_id, 0) >= MAX_SUBSCRIPTIONS_PER_PEER:
            raise RemoteProtocolError(f"at most {MAX_SUBSCRIPTIONS_PER_PEER} subscriptions per peer", code="busy")
        entry = service.acquire(feed_id, subfeed_hash)
        count = entry.count
        self._serving[node_id] = self._serving.get(node_id, 0) + 1
        if not owner:
            self.want(feed_id, subfeed_hash)  # keep our copy live while a peer follows it through us
        reply = {"ok": True, "owner": owner, "numMessages": count}
        body = self._stream(session, entry, feed_id, subfeed_hash, request.position, owner)
        return reply, _Counted(body, functools.partial(self._release, node_id, feed_id, subfeed_hash, entry))

    def _release(self, node_id: str, feed_id: str, subfeed_hash: str, entry: SubfeedLog) -> None:
        self.service.release(feed_id, subfeed_hash, entry)
        left = self._serving.get(node_id, 1) - 1
        if left > 0:
            self._serving[node_id] = left
        else:
            self._serving.pop(node_id, None)

    async def _stream(
        self, session: PeerSession, entry: SubfeedLog, feed_id: str, subfeed_hash: str, position: int, owner: bool
    ) -> AsyncIterator[bytes]:
        while not session.link.is_closed:
            texts = self.service.read_texts(feed_id, subfeed_hash, position, SERVE_BATCH)
            if texts:
                position += len(texts)
                yield ("\n".join(texts) + "\n").encode("utf-8")
                continue
            waiting: set[asyncio.Future[Any]] = {entry.changed(), session.link.closed}
            await asyncio.wait(waiting, timeout=IDLE_SEC / 5, return_when=asyncio.FIRST_COMPLETED)
            if not owner:
                self.want(feed_id, subfeed_hash)


class _Counted:
    """An async iterator that calls ``release`` once when it ends, is closed, or is dropped unstarted."""

    def __init__(self, inner: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._inner.__anext__()
        except BaseException:
            self._done()
            raise

    async def aclose(self) -> None:
        self._done()
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        self._done()
