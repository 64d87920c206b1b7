"""Feeds between channel peers over the existing QUIC sessions (requests in ``quic.messages``).

Reading another node's subfeed: we open a ``feed-subscribe`` stream to the owner (or, while no owner is
reachable, to up to MAX_SOURCES channel peers holding a copy) from our local count. The peer answers with
its count, sends what we lack, then keeps the stream open and writes each new message as it is appended:
no polling over the network. Every line is checked to continue the stream (number) and our log (number,
previous signature, subfeed, signature) before it is stored; a peer whose stream breaks the chain is
reported, its stream dropped and the peer not asked again for that subfeed for BAN_SEC (``feeds_follow``).
Interest in a subfeed lasts IDLE_SEC after the last local reader; then the reader sends
``feed-unsubscribe`` and the server ends the stream (FIN). A peer has one stream per subfeed: a new
subscription ends the previous one.

Serving: channel peers only; at most MAX_SUBSCRIPTIONS_PER_PEER open subscriptions per peer. A
``feed-submit`` is accepted by the owner only, from nodes the subfeed's access rules allow to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from kachery_p2p.daemon.deadline import within

from ..errors import FeedPermissionError, NotFoundError, RemoteProtocolError, UsageError
from ..feeds.names import MAX_SUBMIT_CHARS, check_message
from ..quic import messages
from .endpoint import LinkClosed
from .feeds_follow import IDLE_SEC, Subscription
from .feeds_service import FeedService, SubfeedLog
from .session import PeerSession

log = logging.getLogger("kachery_p2p.feeds")

Reply = tuple[dict[str, Any], AsyncIterator[bytes] | None]
MAX_SUBSCRIPTIONS_PER_PEER = 32
MAX_LOCAL_SUBSCRIPTIONS = 256
SERVE_BATCH = 500
OWNER_TIMEOUT = 5.0
SUBMIT_TIMEOUT = 10.0


class FeedPeers:
    def __init__(self, service: FeedService, network: Any) -> None:
        self.service = service
        self.network = network
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self._serving: dict[str, int] = {}
        self._stops: dict[tuple[str, str, str], asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._owners: dict[str, str] = {}
        for kind in (messages.FeedHas, messages.FeedSubscribe, messages.FeedSubmit, messages.FeedUnsubscribe):
            network.request_handlers[kind] = self.handle

    def stop(self) -> None:
        for subscription in list(self.subscriptions.values()):
            subscription.task.cancel()

    def unsubscribe(self, session: PeerSession, feed_id: str, subfeed_hash: str) -> None:
        header = {"op": "feed-unsubscribe", "feedId": feed_id, "subfeedHash": subfeed_hash}

        async def send() -> None:
            with contextlib.suppress(Exception):
                await within(session.request_header(header), OWNER_TIMEOUT)

        task = asyncio.ensure_future(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        if isinstance(request, messages.FeedUnsubscribe):
            stop = self._stops.get((session.node_id or "", feed_id, subfeed_hash))
            if stop is not None and not stop.done():
                stop.set_result(None)
            return {"ok": True}, None
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
        key = (node_id, feed_id, subfeed_hash)
        previous = self._stops.get(key)
        if previous is not None and not previous.done():
            previous.set_result(None)  # a peer follows a subfeed through one stream: the newest
        stop = self._stops[key] = asyncio.get_running_loop().create_future()
        body = self._stream(session, entry, feed_id, subfeed_hash, request.position, owner, stop)
        return reply, _Counted(body, functools.partial(self._release, node_id, feed_id, subfeed_hash, entry))

    def _release(self, node_id: str, feed_id: str, subfeed_hash: str, entry: SubfeedLog) -> None:
        self.service.release(feed_id, subfeed_hash, entry)
        left = self._serving.get(node_id, 1) - 1
        if left > 0:
            self._serving[node_id] = left
        else:
            self._serving.pop(node_id, None)

    async def _stream(
        self,
        session: PeerSession,
        entry: SubfeedLog,
        feed_id: str,
        subfeed_hash: str,
        position: int,
        owner: bool,
        stop: asyncio.Future[None],
    ) -> AsyncIterator[bytes]:
        try:
            async for block in self._blocks(session, entry, feed_id, subfeed_hash, position, owner, stop):
                yield block
        finally:
            key = (session.node_id or "", feed_id, subfeed_hash)
            if self._stops.get(key) is stop:
                del self._stops[key]

    async def _blocks(
        self,
        session: PeerSession,
        entry: SubfeedLog,
        feed_id: str,
        subfeed_hash: str,
        position: int,
        owner: bool,
        stop: asyncio.Future[None],
    ) -> AsyncIterator[bytes]:
        while not session.link.is_closed and not stop.done():
            texts = self.service.read_texts(feed_id, subfeed_hash, position, SERVE_BATCH)
            if texts:
                position += len(texts)
                yield ("\n".join(texts) + "\n").encode("utf-8")
                continue
            waiting: set[asyncio.Future[Any]] = {entry.changed(), session.link.closed, stop}
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
