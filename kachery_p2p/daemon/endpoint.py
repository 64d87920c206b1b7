"""One UDP socket per node carrying QUIC (client and server roles at once) and, later, STUN/punch.

A thin pump around aioquic's sans-IO ``QuicConnection``. The one demultiplexer of the socket is
``datagram_received``: ``relay.frames.classify`` tells QUIC, relay frames, STUN and probes apart by
their first byte; QUIC packets (also those arriving inside a relay frame from one of our relays) are
routed to connections by destination connection id, as aioquic's own server does; everything else
goes to ``on_other_datagram(kind, data, addr)``. The clock is
``time.monotonic()`` (uvloop's ``loop.time()`` ticks in whole milliseconds, which makes aioquic's
pacer spin; see reference/nat-lab.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from ..errors import PortInUseError, RemoteProtocolError
from ..quic.identity import NodeIdentity
from ..quic.settings import quic_configuration, stream_send_buffered
from ..relay.frames import DatagramKind, classify, decode_relay_frame
from . import udp
from .paths import RELAYED_DATAGRAM_SIZE, Address, Path, RelayPath, datagram_size_for, relay_stable_address

log = logging.getLogger("kachery_p2p.endpoint")

CID_LENGTH = 8
SEND_HIGH_WATER = 1 << 20
SEND_LOW_WATER = 256 * 1024


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
        self, endpoint: QuicEndpoint, conn: QuicConnection, addr: Address, is_client: bool, path: Path | None = None
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
        self.last_activity = time.monotonic()

    # -- io from the endpoint -------------------------------------------------------------------
    def datagram_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self.last_activity = time.monotonic()
        self.conn.receive_datagram(data, self.addr, now=time.monotonic())
        self._process_events()
        # Datagrams that arrive together are answered together: one ACK for a burst, not one each.
        self.transmit_soon()

    def transmit(self) -> None:
        self._transmit_pending = False
        transport = self.endpoint.transport
        if transport is None:
            return
        path = self.path
        for data, _addr in self.conn.datagrams_to_send(now=time.monotonic()):
            self.bytes_sent += len(data)
            path.send(transport, data)
        self._arm_timer()
        self._wake_writers()

    def transmit_soon(self) -> None:
        if not self._transmit_pending:
            self._transmit_pending = True
            self._loop.call_soon(self.transmit)

    def _arm_timer(self) -> None:
        at = self.conn.get_timer()
        if at == self._timer_at and self._timer is not None:
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
            elif isinstance(event, events.StreamReset):
                handler = self._streams.pop(event.stream_id, None)
                if handler is not None:
                    handler.on_reset(RemoteProtocolError("the peer reset the stream", code="stream_reset"))
            elif isinstance(event, events.HandshakeCompleted):
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
        self.conn.send_stream_data(stream_id, data, end_stream=end)
        self.transmit_soon()

    async def drain(self, stream_id: int) -> None:
        """Wait until the stream's unacknowledged data falls below the low-water mark."""
        while stream_send_buffered(self.conn, stream_id) > SEND_HIGH_WATER:
            if self.is_closed:
                raise self.closed.result()
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
        try:
            self.conn.reset_stream(stream_id, code)
        except (ValueError, AssertionError):
            return
        self.transmit_soon()

    async def ping(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._pings[id(waiter)] = waiter
        self.conn.send_ping(id(waiter))
        self.transmit()
        await waiter

    def close(self, reason: str = "", code: int = 0) -> None:
        if self.is_closed:
            return
        self.conn.close(error_code=code, reason_phrase=reason)
        self.transmit()


class QuicEndpoint(asyncio.DatagramProtocol):
    """The node's UDP socket: demultiplexes datagrams and owns every QUIC link."""

    def __init__(
        self,
        identity: NodeIdentity,
        on_incoming: Callable[[Link], None],
        on_other_datagram: Callable[[DatagramKind, bytes, Address], None] | None = None,
        max_datagram_size: int = 1350,
        max_links: int = 512,
    ) -> None:
        self.identity = identity
        self.on_incoming = on_incoming
        self.on_other_datagram = on_other_datagram or (lambda kind, data, addr: None)
        self.server_config = quic_configuration(identity, is_client=False, max_datagram_size=max_datagram_size)
        self._configs: dict[tuple[bool, int], QuicConfiguration] = {}
        self.relays: set[Address] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.links: set[Link] = set()
        self._by_cid: dict[bytes, Link] = {}
        self.max_links = max_links
        self.stats: dict[str, int] = {"malformed": 0, "unroutable": 0, "refused": 0}

    def config_for(self, is_client: bool, addr: Address, relayed: bool) -> QuicConfiguration:
        size = RELAYED_DATAGRAM_SIZE if relayed else datagram_size_for(addr)
        key = (is_client, size)
        config = self._configs.get(key)
        if config is None:
            config = quic_configuration(self.identity, is_client=is_client, max_datagram_size=size)
            self._configs[key] = config
        return config

    async def open(self, host: str, port: int) -> Address:
        try:
            transport, _ = await udp.open_udp(lambda: self, host, port)
        except OSError as exc:
            reason = exc.strerror or _bind_error(host, port) or str(exc)
            raise PortInUseError(
                f"cannot open UDP port {port} on {host} ({reason}): is another daemon or program using it?", "udp"
            ) from None
        return udp.local_address(transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)

    def close(self) -> None:
        for link in list(self.links):
            link.close("node shutting down")
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- routing --------------------------------------------------------------------------------
    def register_cid(self, cid: bytes, link: Link) -> None:
        self._by_cid[cid] = link
        link._cids.add(cid)

    def unregister_cid(self, cid: bytes) -> None:
        link = self._by_cid.pop(cid, None)
        if link is not None:
            link._cids.discard(cid)

    def forget(self, link: Link) -> None:
        self.links.discard(link)
        for cid in list(link._cids):
            self._by_cid.pop(cid, None)
        link._cids.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        try:
            kind = classify(data)
            if kind == "quic":
                self._deliver(data, addr, None)
            elif kind == "relay" and addr in self.relays:
                frame = decode_relay_frame(data)  # ValueError: counted as malformed below
                if frame.kind != "from_relay":
                    raise ValueError("a relay frame to a relay")
                source = frame.node_id
                self._deliver(frame.payload, relay_stable_address(addr, source), RelayPath(addr, source))
            else:
                self.on_other_datagram(kind, data, addr)
        except ValueError:
            self.stats["malformed"] += 1
        except Exception:  # a bad datagram must never take the socket down
            self.stats["malformed"] += 1
            log.exception("dropped a datagram from %s", addr)

    def _deliver(self, data: bytes, addr: Address, path: Path | None) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            self.stats["malformed"] += 1
            return
        link = self._by_cid.get(header.destination_cid)
        if link is None:
            link = self._accept(data, header, addr, path)
            if link is None:
                return
        link.datagram_received(data)

    def _accept(self, data: bytes, header: Any, addr: Address, path: Path | None) -> Link | None:
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
            self.stats["unroutable"] += 1
            return None
        if header.version not in self.server_config.supported_versions:
            self.stats["refused"] += 1
            return None
        if len(self.links) >= self.max_links:
            self.stats["refused"] += 1
            return None
        conn = QuicConnection(
            configuration=self.config_for(False, addr, relayed=path is not None),
            original_destination_connection_id=header.destination_cid,
        )
        link = Link(self, conn, addr, is_client=False, path=path)
        self.links.add(link)
        self.register_cid(header.destination_cid, link)
        self.register_cid(conn.host_cid, link)
        self.on_incoming(link)
        return link

    def connect(self, addr: Address, path: Path | None = None) -> Link:
        """Dial ``addr`` (a real address, or a stable relay address with its RelayPath)."""
        conn = QuicConnection(configuration=self.config_for(True, addr, relayed=path is not None))
        link = Link(self, conn, addr, is_client=True, path=path)
        self.links.add(link)
        self.register_cid(conn.host_cid, link)
        conn.connect(addr, now=time.monotonic())
        link.transmit()
        return link


def _bind_error(host: str, port: int) -> str | None:
    """Why binding fails, from a plain socket (uvloop's error carries no strerror)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or (os.strerror(exc.errno) if exc.errno else None)
    return None
