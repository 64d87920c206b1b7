"""One QUIC connection on the node's shared socket: the pump around aioquic's ``QuicConnection``.

Datagrams come in from the endpoint's demux (``datagram_received``); what aioquic wants to send goes
out through the link's ``path`` (direct, or through a relay and maybe later direct: ``paths.py``);
aioquic's timer is armed on the loop; events become stream callbacks, handshake and close futures.
The clock is ``time.monotonic()`` (uvloop's ``loop.time()`` ticks in whole milliseconds, which makes
aioquic's pacer spin; see reference/nat-lab.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from ..errors import RemoteProtocolError
from ..peering.path import PathKind
from ..quic.settings import stream_send_buffered
from .paths import Address, Path
from .serve_budget import TRIM_AFTER, collect_and_trim


def stream_send_reset(conn: QuicConnection, stream_id: int) -> bool:
    """Was the stream's sending side reset (by us, or by aioquic on the peer's STOP_SENDING)? Also once
    aioquic discarded the stream's state (the reset acknowledged, the peer's side ended): sending on it
    then raises aioquic's ValueError."""
    stream = conn._streams.get(stream_id)
    if stream is None:
        discarded = getattr(conn, "_stream_is_discarded", None)
        return bool(discarded is not None and discarded(stream_id))
    return getattr(stream.sender, "_reset_error_code", None) is not None


SEND_HIGH_WATER = 1 << 20
SEND_LOW_WATER = 256 * 1024
# RFC 9000 section 8: before a server has validated the client's address it sends at most three times
# what it received from it. aioquic holds its handshake to that but not its CONNECTION_CLOSE, so a
# ClientHello from a forged (silent) source got 3.11x its size back; ``transmit`` enforces the total.
AMPLIFICATION_FACTOR = 3


class LinkOwner(Protocol):
    """What a link needs of its endpoint: the socket and the connection-id routing table."""

    transport: asyncio.DatagramTransport | None

    def register_cid(self, cid: bytes, link: Link) -> None: ...
    def unregister_cid(self, cid: bytes) -> None: ...
    def forget(self, link: Link) -> None: ...


class StreamHandler(Protocol):
    def on_data(self, data: bytes, end: bool) -> None: ...
    def on_reset(self, error: Exception) -> None: ...


class LinkClosed(ConnectionError):
    """The QUIC connection ended; ``code`` and ``reason`` are what the peer or aioquic said."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def describe_close(event: events.ConnectionTerminated) -> str:
    if event.error_code == 0x178:
        return "the peer speaks another protocol version (no common ALPN)"
    reason = event.reason_phrase or "no reason given"
    return f"connection closed ({reason}, code {event.error_code:#x})"


class Link:
    """One QUIC connection on the shared socket."""

    def __init__(
        self, endpoint: LinkOwner, conn: QuicConnection, addr: Address, is_client: bool, path: Path | None = None
    ) -> None:
        self.endpoint = endpoint
        self.conn = conn
        # The address aioquic sees never changes; ``path`` decides where datagrams really go.
        self.addr = addr
        self.path = path or Path(addr)
        self.is_client = is_client
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[LinkClosed] = loop.create_future()
        self.on_new_stream: Callable[[int], StreamHandler | None] = lambda stream_id: None
        self.on_handshake: Callable[[], None] = lambda: None
        self._streams: dict[int, StreamHandler] = {}
        self._cids: set[bytes] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_pending = False
        self._send_waiters: dict[int, asyncio.Future[None]] = {}
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.bytes_received = 0
        self.bytes_sent = 0
        # A client dialed the address itself; a server's peer is validated by the handshake completing
        # (it read our Handshake keys) or by echoing a Retry token (``QuicEndpoint``).
        self.address_validated = is_client
        self.dropped_unvalidated = 0
        self.last_activity = time.monotonic()

    # -- io from the endpoint -------------------------------------------------------------------
    def datagram_received(self, data: bytes, via: PathKind = "direct", source: Address | None = None) -> None:
        size = len(data)
        self.bytes_received += size
        self.path.received(via, source or self.addr, size)
        self.last_activity = now = time.monotonic()
        self.conn.receive_datagram(data, self.addr, now=now)
        self._process_events()
        # Datagrams that arrive together are answered together: one ACK for a burst, not one each.
        if not self._transmit_pending:
            self._transmit_pending = True
            self._loop.call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_pending = False
        transport = self.endpoint.transport
        if transport is None:
            return
        burst: list[bytes] = []
        for data, _addr in self.conn.datagrams_to_send(now=time.monotonic()):
            if not self.address_validated and self.bytes_sent + len(data) > AMPLIFICATION_FACTOR * self.bytes_received:
                self.dropped_unvalidated += 1  # lost to aioquic: only a close or a probe can get here
                continue
            self.bytes_sent += len(data)
            burst.append(data)
        if burst:  # one hand-over per burst: the socket sends runs of equal-size datagrams in one system call
            self.path.send_many(transport, burst)
        self._arm_timer()
        self._wake_writers()

    def transmit_soon(self) -> None:
        if not self._transmit_pending:
            self._transmit_pending = True
            self._loop.call_soon(self.transmit)

    def _arm_timer(self) -> None:
        # One timer per connection, moved only when it must fire sooner: a deadline that moved later (every
        # ACK pushes the loss and idle timers on) keeps the armed timer, which fires early, finds nothing due
        # in ``handle_timer`` and arms for the new deadline then. No cancel and re-arm per burst.
        at = self.conn.get_timer()
        if self._timer is not None and at is not None and self._timer_at is not None and at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_later(max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.conn.handle_timer(now=time.monotonic())
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        event = self.conn.next_event()
        while event is not None:
            if isinstance(event, events.StreamDataReceived):
                handler = self._streams.get(event.stream_id)
                if handler is None:
                    # A stream of ours with no handler is a request we gave up on (timed out, reset):
                    # its late reply is dropped, never taken for a request from the peer.
                    if self._peer_opened(event.stream_id):
                        handler = self.on_new_stream(event.stream_id)
                    if handler is None:
                        if self._can_stop(event.stream_id):
                            self.conn.stop_stream(event.stream_id, 1)
                        event = self.conn.next_event()
                        continue
                    self._streams[event.stream_id] = handler
                if event.end_stream:
                    self._streams.pop(event.stream_id, None)
                handler.on_data(event.data, event.end_stream)
            elif isinstance(event, events.StopSendingReceived):
                # aioquic reset the stream's sending side: whoever waits to send more must stop.
                waiter = self._send_waiters.pop(event.stream_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif isinstance(event, events.StreamReset):
                handler = self._streams.pop(event.stream_id, None)
                if handler is not None:
                    handler.on_reset(RemoteProtocolError("the peer reset the stream", code="stream_reset"))
            elif isinstance(event, events.HandshakeCompleted):
                self.address_validated = True
                if not self.handshake.done():
                    self.handshake.set_result(None)
                self.on_handshake()
            elif isinstance(event, events.ConnectionIdIssued):
                self.endpoint.register_cid(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self.endpoint.unregister_cid(event.connection_id)
            elif isinstance(event, events.PingAcknowledged):
                waiter = self._pings.pop(event.uid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(LinkClosed(describe_close(event), event.error_code))
            event = self.conn.next_event()

    def _peer_opened(self, stream_id: int) -> bool:
        # Bit 0 of a stream id: 0 when the client opened it, 1 when the server did.
        return bool(stream_id & 1) == self.is_client

    def _can_stop(self, stream_id: int) -> bool:
        # Only streams the peer opened and that can carry data to us can be stopped.
        return not (stream_id & 2 and (stream_id & 1) == (0 if self.is_client else 1))

    def _terminated(self, error: LinkClosed) -> None:
        if self.closed.done():
            return
        self.closed.set_result(error)
        if not self.handshake.done():
            self.handshake.set_exception(error)
            self.handshake.exception()  # mark retrieved: nobody may be waiting
        for handler in list(self._streams.values()):
            handler.on_reset(error)
        self._streams.clear()
        for waiter in [*self._send_waiters.values(), *self._pings.values()]:
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()
        self._send_waiters.clear()
        self._pings.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.endpoint.forget(self)
        # Break the link <-> session cycle (bound methods): the closed connection and its stream buffers
        # are freed when the last holder lets go, not at some later garbage collection.
        self.on_new_stream = lambda stream_id: None
        self.on_handshake = lambda: None
        # The connection is over: drop its streams' send buffers now (a stalled reader leaves MBs of them,
        # issue 10 #4) and give the heap back if that was a lot.
        streams = self.conn._streams
        buffered = sum(len(stream.sender._buffer) for stream in streams.values())
        streams.clear()
        if buffered >= TRIM_AFTER:
            self._loop.call_later(0.5, collect_and_trim)

    # -- api for sessions -----------------------------------------------------------------------
    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    def open_stream(self, handler: StreamHandler | None, unidirectional: bool = False) -> int:
        if self.is_closed:
            raise self.closed.result()
        stream_id = self.conn.get_next_available_stream_id(is_unidirectional=unidirectional)
        if handler is not None:
            self._streams[stream_id] = handler
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        if self.is_closed:
            raise self.closed.result()
        if stream_send_reset(self.conn, stream_id):
            raise RemoteProtocolError("the peer stopped reading the stream", code="stream_reset")
        self.conn.send_stream_data(stream_id, data, end_stream=end)
        self.transmit_soon()

    async def drain(self, stream_id: int) -> None:
        """Wait until the stream's unacknowledged data falls below the low-water mark."""
        while stream_send_buffered(self.conn, stream_id) > SEND_HIGH_WATER:
            if self.is_closed:
                raise self.closed.result()
            if stream_send_reset(self.conn, stream_id):
                raise RemoteProtocolError("the peer stopped reading the stream", code="stream_reset")
            waiter = self._send_waiters.get(stream_id)
            if waiter is None or waiter.done():
                waiter = self._loop.create_future()
                self._send_waiters[stream_id] = waiter
            await waiter

    def _wake_writers(self) -> None:
        if not self._send_waiters:
            return
        for stream_id, waiter in list(self._send_waiters.items()):
            if stream_send_buffered(self.conn, stream_id) <= SEND_LOW_WATER and not waiter.done():
                waiter.set_result(None)
                del self._send_waiters[stream_id]

    def reset(self, stream_id: int, code: int = 1) -> None:
        self._streams.pop(stream_id, None)
        if self.is_closed:
            return
        with contextlib.suppress(ValueError, AssertionError):
            self.conn.reset_stream(stream_id, code)
        if self._can_stop(stream_id):
            # Ask the peer to stop sending too (a reply we no longer want), instead of reading all of it.
            with contextlib.suppress(ValueError, AssertionError):
                self.conn.stop_stream(stream_id, code)
        self.transmit_soon()

    async def ping(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._pings[id(waiter)] = waiter
        self.conn.send_ping(id(waiter))
        self.transmit()
        await waiter

    def abort(self, reason: str) -> None:
        """End the connection here without telling the peer (it may not be who its address says)."""
        self._terminated(LinkClosed(reason))

    def close(self, reason: str = "", code: int = 0) -> None:
        if self.is_closed:
            return
        self.conn.close(error_code=code, reason_phrase=reason)
        self.transmit()
