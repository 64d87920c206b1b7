"""A peer session: one QUIC link, authenticated both ways, carrying request streams.

The dialer checks the server's certificate against the node id it dialed (``check_peer_certificate``);
the server sends a fresh nonce on its first unidirectional stream and serves nothing until the client's
signed ``auth`` message verifies (``quic.auth``). Both sides then know which channels they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from kachery_p2p.daemon.deadline import within

from ..channels.membership import shared_channels
from ..errors import RemoteProtocolError
from ..quic import messages
from ..quic.auth import channel_binding, make_auth, my_channel_proofs, new_nonce, verify_auth
from ..quic.frames import FrameReader, encode_frame
from ..quic.identity import NodeIdentity, check_peer_certificate, short_node_id
from ..quic.session import Authenticate, Refuse, RequestGate, UpdateChannels
from ..quic.settings import peer_certificate, smoothed_rtt
from .link import Link, LinkClosed
from .serve_budget import send_body

log = logging.getLogger("kachery_p2p.session")

AUTH_TIMEOUT = 10.0
MAX_SMALL_BODY = 4 << 20
BodySink = Callable[[bytes], None]
Handler = Callable[["PeerSession", messages.Request], Awaitable[tuple[dict[str, Any], AsyncIterator[bytes] | None]]]


class FrameCollector:
    """Stream handler: one header frame, then body bytes to a sink (or collected, bounded)."""

    def __init__(self, sink: BodySink | None = None, max_body: int = MAX_SMALL_BODY) -> None:
        self._reader = FrameReader()
        self._sink = sink
        self._body = bytearray()
        self._max_body = max_body
        loop = asyncio.get_running_loop()
        self.header: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.done: asyncio.Future[bytes] = loop.create_future()
        self.received = 0

    def on_data(self, data: bytes, end: bool) -> None:
        if self.done.done():
            return
        try:
            if not self._reader.done:
                parsed = self._reader.feed(data)
                if parsed is None:
                    if end:
                        raise RemoteProtocolError("stream ended inside a header", code="bad_frame")
                    return
                header, data = parsed
                self.header.set_result(header)
            if data:
                self.received += len(data)
                if self._sink is not None:
                    self._sink(data)
                else:
                    if len(self._body) + len(data) > self._max_body:
                        raise RemoteProtocolError("response body too large", code="frame_too_large")
                    self._body += data
            if end:
                self.done.set_result(bytes(self._body))
        except Exception as exc:
            self._fail(exc)

    def on_reset(self, error: Exception) -> None:
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        for future in (self.header, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()


class PeerSession:
    """Authentication, channel sharing and request streams over one link."""

    def __init__(
        self,
        link: Link,
        identity: NodeIdentity,
        label: str,
        channels: Callable[[], list[str]],
        handler: Handler,
        expected_node_id: str | None = None,
        roles: tuple[str, ...] = (),
    ) -> None:
        self.link = link
        self.my_roles = roles
        self.peer_roles: tuple[str, ...] = ()
        self.identity = identity
        self.my_label = label
        self.my_channels = channels
        self.handler = handler
        self.expected_node_id = expected_node_id
        self.node_id: str | None = None
        self.label = ""
        self.shared_channels: list[str] = []
        self.connected_at = time.time()
        self._server_nonce = ""
        self._client_nonce = ""
        self._peer_proofs: tuple[str, ...] = ()
        self._peer_binding = b""
        self._base_binding = b""
        self.gate = RequestGate(link.is_client)
        self._tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        # Set while none of our channel updates is in flight: until the peer answers one, it may still
        # refuse a request for a channel we just joined (see ``channels_settled``).
        self._channels_sent = asyncio.Event()
        self._channels_sent.set()
        self._channel_updates = 0
        self._challenge: FrameCollector | None = None
        self._challenge_seen = False
        link.on_new_stream = self._on_new_stream
        if not link.is_client:
            link.on_handshake = self._send_challenge

    # -- authentication ---------------------------------------------------------------------------
    async def authenticate(self, timeout: float = AUTH_TIMEOUT) -> None:
        """Run the handshake and proofs; raises RemoteProtocolError or LinkClosed on failure."""
        try:
            await within(self._authenticate(), timeout)
        except asyncio.TimeoutError:
            self.link.close("authentication timed out", code=1)
            raise RemoteProtocolError("authentication timed out", code="unauthenticated") from None
        except RemoteProtocolError as exc:
            self.link.close(str(exc), code=1)
            raise
        if not self.ready.done():
            self.ready.set_result(None)

    async def _authenticate(self) -> None:
        if self.link.is_client:
            await self._authenticate_as_client()
            return
        # The accepting side waits for the client's proof, or for the client to hang up.
        waiting: set[asyncio.Future[Any]] = {self.ready, self.link.closed}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not self.ready.done():
            raise self.link.closed.result()

    async def _authenticate_as_client(self) -> None:
        await self.link.handshake
        self.node_id = check_peer_certificate(peer_certificate(self.link.conn), self.expected_node_id)
        if self._challenge is None:
            self._challenge = FrameCollector()
        challenge = messages.parse_challenge(await self._challenge.header)
        auth = make_auth(self.identity, self.node_id, challenge.nonce, self.my_label, self.my_channels())
        reply = messages.check_ok(await self.request_header(auth))
        self._server_nonce, self._client_nonce = challenge.nonce, str(auth["nonce"])
        self._base_binding = channel_binding(self._server_nonce, self._client_nonce)
        self.label = str(reply.get("label", ""))[: messages.MAX_LABEL]
        roles = reply.get("roles", [])
        self.peer_roles = tuple(str(r)[:32] for r in roles[:8]) if isinstance(roles, list) else ()
        self._set_peer_proofs(messages.parse_proofs(reply.get("channelProofs", [])), self._base_binding)

    def _send_challenge(self) -> None:
        self._server_nonce = new_nonce()
        stream_id = self.link.open_stream(None, unidirectional=True)
        self.link.send(stream_id, encode_frame({"op": "challenge", "nonce": self._server_nonce}), end=True)

    def _verify_client(self, header: dict[str, Any]) -> dict[str, Any]:
        auth = messages.parse_auth(header)
        verified = verify_auth(auth, self.identity.node_id, self._server_nonce, self.my_channels())
        self.node_id, self.label = verified.node_id, verified.label
        self._client_nonce = verified.client_nonce
        self._base_binding = channel_binding(self._server_nonce, self._client_nonce)
        self._set_peer_proofs(auth.channel_proofs, self._base_binding)
        if not self.ready.done():
            self.ready.set_result(None)
        return {
            "ok": True,
            "label": self.my_label,
            "roles": list(self.my_roles),
            "channelProofs": my_channel_proofs(self.identity, self.my_channels(), self._base_binding),
        }

    def _set_peer_proofs(self, proofs: tuple[str, ...], binding: bytes) -> None:
        self._peer_proofs, self._peer_binding = proofs, binding
        self.refresh_shared()

    def refresh_shared(self) -> None:
        """Recompute the shared channels from the peer's last proofs (also after our own join/leave)."""
        if self.node_id is None:
            return
        self.shared_channels = shared_channels(
            self.my_channels(), list(self._peer_proofs), self._peer_binding, self.node_id
        )

    @property
    def authenticated(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    # -- channels -----------------------------------------------------------------------------------
    async def exchange_channels(self) -> None:
        """Tell the peer our channels again (after a join or leave) and learn theirs."""
        nonce = new_nonce()
        binding = self._base_binding + nonce.encode()
        proofs = my_channel_proofs(self.identity, self.my_channels(), binding)
        self._channel_updates += 1
        self._channels_sent.clear()
        try:
            reply = messages.check_ok(
                await self.request_header({"op": "channels", "nonce": nonce, "channelProofs": proofs})
            )
        finally:
            self._channel_updates -= 1
            if not self._channel_updates:
                self._channels_sent.set()
        self._set_peer_proofs(messages.parse_proofs(reply.get("channelProofs", [])), binding)

    async def channels_settled(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the peer has answered every channel update we sent; True if
        one was in flight, so that a request it refused for want of a shared channel is worth asking again
        (a load right after a join raced the join's update to the peer, and found nobody)."""
        if self._channels_sent.is_set():
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await within(self._channels_sent.wait(), timeout)
        return True

    def _answer_channels(self, update: messages.ChannelsUpdate) -> dict[str, Any]:
        binding = self._base_binding + update.nonce.encode()
        self._set_peer_proofs(update.channel_proofs, binding)
        return {"ok": True, "channelProofs": my_channel_proofs(self.identity, self.my_channels(), binding)}

    # -- requests we make --------------------------------------------------------------------------
    async def request_header(self, header: dict[str, Any]) -> dict[str, Any]:
        collector = FrameCollector()
        stream_id = self.link.open_stream(collector)
        self.link.send(stream_id, encode_frame(header), end=True)
        return await collector.header

    async def request(
        self, header: dict[str, Any], sink: BodySink | None = None, timeout: float | None = None
    ) -> tuple[dict[str, Any], bytes]:
        """Send a request; return the response header and (without a sink) the body."""
        collector = FrameCollector(sink)
        stream_id = self.link.open_stream(collector)
        self.link.send(stream_id, encode_frame(header), end=True)
        try:
            if timeout is None:
                body = await collector.done
            else:
                body = await within(collector.done, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.link.reset(stream_id)
            raise
        return collector.header.result(), body

    async def request_early(
        self, header: dict[str, Any], timeout: float, max_body: int
    ) -> tuple[dict[str, Any], asyncio.Future[bytes], Callable[[], None]]:
        """Send a request; return its response header as soon as it arrives, with the body still to come (a
        future, failed if the stream breaks or the body is over ``max_body``) and how to stop it (a reset)."""
        collector = FrameCollector(max_body=max_body)
        stream_id = self.link.open_stream(collector)
        self.link.send(stream_id, encode_frame(header), end=True)
        try:
            reply = await within(collector.header, timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.link.reset(stream_id)
            raise

        def stop() -> None:
            if not collector.done.done():
                self.link.reset(stream_id)

        return reply, collector.done, stop

    # -- requests we serve --------------------------------------------------------------------------
    def _on_new_stream(self, stream_id: int) -> FrameCollector | None:
        is_uni = bool(stream_id & 2)
        if is_uni:
            if self.link.is_client and not self._challenge_seen:
                self._challenge_seen = True
                if self._challenge is None:
                    self._challenge = FrameCollector()
                return self._challenge
            return None
        collector = FrameCollector(max_body=0)
        task = asyncio.ensure_future(self._serve(stream_id, collector))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return collector

    async def _serve(self, stream_id: int, collector: FrameCollector) -> None:
        try:
            header = await collector.header
            await collector.done
        except Exception:
            self.link.reset(stream_id)
            return
        try:
            decision = self.gate.decide(header, authenticated=self.ready.done())  # quic.session decides
            if isinstance(decision, Refuse):
                self._reply(stream_id, decision.reply)
                return
            if isinstance(decision, Authenticate):
                self._reply(stream_id, self._verify_client(decision.header))
                return
            if isinstance(decision, UpdateChannels):
                self._reply(stream_id, self._answer_channels(decision.request))
                return
            try:
                reply_header, body = await self.handler(self, decision.request)
                self.link.send(stream_id, encode_frame(reply_header), end=body is None)
                if body is not None:
                    await send_body(self.link, stream_id, body)  # stall timeout, body always closed
            finally:
                self.gate.finished()
        except RemoteProtocolError as exc:
            code = exc.code if exc.code in messages.ERROR_CODES else "bad_request"
            self._reply(stream_id, messages.error(code, str(exc)))
            if exc.code == "unauthenticated":
                self.link.transmit()  # the coded reply leaves before the CONNECTION_CLOSE
                self.link.close(str(exc), code=1)
        except LinkClosed:
            return
        except Exception as exc:
            log.exception("serving a request from %s failed", short_node_id(self.node_id or "?" * 64))
            self._reply(stream_id, messages.error("internal", f"internal error: {type(exc).__name__}"))

    def _reply(self, stream_id: int, header: dict[str, Any]) -> None:
        if not self.link.is_closed:
            try:
                self.link.send(stream_id, encode_frame(header), end=True)
            except (AssertionError, ValueError, RemoteProtocolError):  # (a stream the peer stopped)
                self.link.reset(stream_id)

    # -- information ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        rtt = smoothed_rtt(self.link.conn)
        return {
            "nodeId": self.node_id,
            "label": self.label,
            "channels": list(self.shared_channels),
            "path": self.link.path.kind,
            "address": self.link.path.describe(),
            "rttMs": None if rtt is None else round(rtt * 1000, 3),
            "initiator": "us" if self.link.is_client else "peer",
            "roles": list(self.peer_roles),
            "bytesSent": self.link.bytes_sent,
            "bytesReceived": self.link.bytes_received,
            "bytesByPath": self.link.path.bytes_by_path(),
        }

    def close(self, reason: str = "") -> None:
        for task in list(self._tasks):
            task.cancel()
        self.link.close(reason)
