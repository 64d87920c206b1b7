"""One UDP socket per node carrying QUIC (client and server roles at once) and, later, STUN/punch.

A thin pump around aioquic's sans-IO ``QuicConnection``. The one demultiplexer of the socket is
``datagram_received``: ``relay.frames.classify`` tells QUIC, relay frames, STUN and probes apart by
their first byte; QUIC packets (also those arriving inside a relay frame from one of our relays) are
routed to connections by destination connection id, as aioquic's own server does; everything else
goes to ``on_other_datagram(kind, data, addr)``.

A connection to a peer reached through a relay has a ``PeerPath``; when a hole punch to that peer is
confirmed, ``direct_found`` moves every such connection to the direct address (same connection, same
streams, no new handshake).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_quic_retry, pull_quic_header

from ..errors import PortInUseError
from ..peering.path import PathKind
from ..quic.flow import KacheryQuicConnection
from ..quic.identity import NodeIdentity
from ..quic.retry import RetryPolicy, RetryTokens
from ..quic.settings import congestion_control_from_environ, quic_configuration
from ..relay.frames import DatagramKind, classify, decode_relay_frame
from . import udp
from .link import Link, LinkClosed, StreamHandler
from .paths import RELAYED_DATAGRAM_SIZE, Address, Path, PeerPath, datagram_size_for, relay_stable_address

__all__ = ["Address", "Link", "LinkClosed", "QuicEndpoint", "StreamHandler"]

log = logging.getLogger("kachery_p2p.endpoint")

CID_LENGTH = 8
PENDING_DIRECT_SEC = 10.0
# Accepted connections not yet authenticated (issue 10 #1): bounded per source and in total; when full,
# the oldest half-open one is dropped (silently: its Initial may carry a forged address), so a flood of
# Initials can no longer lock every new peer out for the 10 s authentication timeout.
MAX_HALF_OPEN = 256
MAX_HALF_OPEN_PER_SOURCE = 8
# Under load (a quarter of MAX_HALF_OPEN half-open, or half a source's share from one source) a direct
# Initial without a token gets a stateless Retry; only a client that echoes the token (it receives at
# its address) gets a slot (``quic.retry``). Initials through a relay come from authenticated nodes.


class QuicEndpoint(asyncio.DatagramProtocol):
    """The node's UDP socket: demultiplexes datagrams and owns every QUIC link."""

    def __init__(
        self,
        identity: NodeIdentity,
        on_incoming: Callable[[Link], None],
        on_other_datagram: Callable[[DatagramKind, bytes, Address], None] | None = None,
        max_datagram_size: int = 1350,
        max_links: int = 512,
        congestion_control: str | None = None,
    ) -> None:
        self.identity = identity
        # kachery-bbr unless KACHERY_P2P_CONGESTION_CONTROL says otherwise (a bad value: ConfigError at start-up)
        self.congestion_control = congestion_control or congestion_control_from_environ()
        self.on_incoming = on_incoming
        self.on_other_datagram = on_other_datagram or (lambda kind, data, addr: None)
        self.server_config = quic_configuration(
            identity, is_client=False, max_datagram_size=max_datagram_size, congestion_control=self.congestion_control
        )
        self._configs: dict[tuple[bool, int], QuicConfiguration] = {}
        self.relays: set[Address] = set()
        self.frame_tokens: dict[Address, bytes] = {}  # what each relay wants in our frames (RelayClient)
        self.transport: asyncio.DatagramTransport | None = None
        self.links: set[Link] = set()
        self._peer_paths: dict[str, set[PeerPath]] = {}
        self._pending_direct: dict[str, tuple[Address, float]] = {}
        self._by_cid: dict[bytes, Link] = {}
        self.max_links = max_links
        self._half_open: dict[Link, tuple[Any, ...]] = {}  # insertion order: oldest first
        self.stats: dict[str, int] = dict.fromkeys(("malformed", "unroutable", "refused", "evicted"), 0)
        self.stats.update({"retry_sent": 0, "retry_validated": 0, "bad_token": 0})
        self.retry_tokens = RetryTokens()
        self.retry_policy = RetryPolicy(MAX_HALF_OPEN, MAX_HALF_OPEN_PER_SOURCE)

    def config_for(self, is_client: bool, addr: Address, relayed: bool) -> QuicConfiguration:
        size = RELAYED_DATAGRAM_SIZE if relayed else datagram_size_for(addr)
        key = (is_client, size)
        config = self._configs.get(key)
        if config is None:
            config = quic_configuration(
                self.identity, is_client=is_client, max_datagram_size=size, congestion_control=self.congestion_control
            )
            self._configs[key] = config
        return config

    async def open(self, host: str, port: int) -> Address:
        try:
            transport, _ = await udp.open_udp(lambda: self, host, port)
        except OSError as exc:
            reason = exc.strerror or _bind_error(host, port) or str(exc)
            raise PortInUseError(  # start-daemon adds which option chooses another port
                f"cannot open UDP port {port} on {host} ({reason}): is another daemon or program using it?", "udp"
            ) from None
        return udp.local_address(transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)

    def close(self) -> None:
        for link in list(self.links):
            link.close("node shutting down")  # the CONNECTION_CLOSE goes out now
            link.abort("node shutting down")  # no socket to finish closing on: wake whoever still waits
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
        self._half_open.pop(link, None)
        if isinstance(link.path, PeerPath):
            paths = self._peer_paths.get(link.path.peer_node_id, set())
            paths.discard(link.path)
            if not paths:
                self._peer_paths.pop(link.path.peer_node_id, None)
        for cid in list(link._cids):
            self._by_cid.pop(cid, None)
        link._cids.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if type(addr) is not tuple or len(addr) != 2:
            addr = (addr[0], addr[1])
        # Fast path, nearly every datagram of a transfer: a short-header QUIC packet (first bits 01) to a known
        # connection id, which sits right after the first byte. No header object, no Buffer, no copy but the id.
        if len(data) > CID_LENGTH and data[0] & 0xC0 == 0x40:
            link = self._by_cid.get(data[1 : 1 + CID_LENGTH])
            if link is not None:
                try:
                    link.datagram_received(data, "direct", addr)
                except Exception:  # a bad datagram must never take the socket down
                    self.stats["malformed"] += 1
                    log.exception("dropped a datagram from %s", addr)
                return
        try:
            kind = classify(data)
            if kind == "quic":
                self._deliver(data, "direct", addr, None)
            elif kind == "relay" and addr in self.relays:
                frame = decode_relay_frame(data)  # ValueError: counted as malformed below
                if frame.kind != "from_relay":
                    raise ValueError("a relay frame to a relay")
                self._deliver(frame.payload, "relayed", addr, frame.node_id)
            else:
                self.on_other_datagram(kind, data, addr)
        except ValueError:
            self.stats["malformed"] += 1
        except Exception:  # a bad datagram must never take the socket down
            self.stats["malformed"] += 1
            log.exception("dropped a datagram from %s", addr)

    def _deliver(self, data: bytes, via: PathKind, source: Address, peer: str | None) -> None:
        """A QUIC packet from ``source`` (a relay, for one from ``peer``) to the link owning its CID."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            self.stats["malformed"] += 1
            return
        link = self._by_cid.get(header.destination_cid)
        if link is None:
            if peer is None:
                link = self._accept(data, header, source, None)
            else:
                path = PeerPath(source, peer, self.frame_tokens)
                link = self._accept(data, header, relay_stable_address(source, peer), path)
            if link is None:
                return
        link.datagram_received(data, via, source)

    def _accept(self, data: bytes, header: Any, addr: Address, path: Path | None) -> Link | None:
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
            self.stats["unroutable"] += 1
            return None
        if header.version not in self.server_config.supported_versions:
            self.stats["refused"] += 1
            return None
        peer = path.peer_node_id if isinstance(path, PeerPath) else ""
        source: tuple[Any, ...] = (addr[0],) if path is None else ("relayed", path.addr, peer)
        from_source = [link for link, key in self._half_open.items() if key == source]
        odcid, retry_cid = header.destination_cid, None
        if path is None:
            if header.token:
                odcid = self.retry_tokens.check(header.token, addr, header.destination_cid, time.monotonic())
                if odcid is None:  # forged, expired, or minted for another address: no slot
                    self.stats["bad_token"] += 1
                    return None
                retry_cid = header.destination_cid
                self.stats["retry_validated"] += 1
            elif self.retry_policy.require_retry(len(self._half_open), len(from_source), time.monotonic()):
                self._send_retry(header, addr)
                return None
        if len(from_source) >= MAX_HALF_OPEN_PER_SOURCE:
            self._evict(_oldest(from_source))
        elif len(self._half_open) >= MAX_HALF_OPEN:
            self._evict(_oldest(list(self._half_open)))
        if len(self.links) >= self.max_links:
            self.stats["refused"] += 1
            return None
        conn = KacheryQuicConnection(
            configuration=self.config_for(False, addr, relayed=path is not None),
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_cid,
        )
        link = self._new_link(conn, addr, False, path)
        link.address_validated = retry_cid is not None
        self._half_open[link] = source
        self.register_cid(header.destination_cid, link)
        self.register_cid(conn.host_cid, link)
        self.on_incoming(link)
        return link

    def _send_retry(self, header: Any, addr: Address) -> None:
        """A stateless Retry: no state kept; the token carries what the validated Initial needs."""
        if self.transport is None:
            return
        retry_cid = os.urandom(CID_LENGTH)
        token = self.retry_tokens.mint(addr, header.destination_cid, retry_cid, time.monotonic())
        packet = encode_quic_retry(
            version=header.version,
            source_cid=retry_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
        self.stats["retry_sent"] += 1
        self.transport.sendto(packet, addr)

    def connect(self, addr: Address, path: Path | None = None) -> Link:
        """Dial ``addr`` (a real address, or a stable relay address with its PeerPath)."""
        conn = KacheryQuicConnection(configuration=self.config_for(True, addr, relayed=path is not None))
        link = self._new_link(conn, addr, True, path)
        self.register_cid(conn.host_cid, link)
        conn.connect(addr, now=time.monotonic())
        link.transmit()
        return link

    def _new_link(self, conn: QuicConnection, addr: Address, is_client: bool, path: Path | None) -> Link:
        link = Link(self, conn, addr, is_client=is_client, path=path)
        self.links.add(link)
        if isinstance(path, PeerPath):
            self._peer_paths.setdefault(path.peer_node_id, set()).add(path)
            pending = self._pending_direct.pop(path.peer_node_id, None)
            if pending is not None and time.monotonic() - pending[1] < PENDING_DIRECT_SEC:
                path.direct_found(pending[0])
        return link

    def established(self, link: Link) -> None:
        """The peer on ``link`` authenticated: it no longer counts as half-open."""
        self._half_open.pop(link, None)

    def _evict(self, link: Link) -> None:
        self.stats["evicted"] += 1
        link.abort("too many half-open connections")

    # -- paths ------------------------------------------------------------------------------------
    def direct_found(self, peer_node_id: str, address: Address) -> int:
        """A hole punch to ``peer_node_id`` was confirmed at ``address``: move its relayed connections
        there (a connection set up in the next seconds moves too). Returns how many moved."""
        paths = self._peer_paths.get(peer_node_id, set())
        if not paths:
            self._pending_direct[peer_node_id] = (address, time.monotonic())
        moved = 0
        for path in paths:
            if path.direct_found(address):
                moved += 1
                log.info("connection to %s moved to the direct path %s", peer_node_id[:8], path.describe())
        return moved

    def has_peer_path(self, peer_node_id: str) -> bool:
        return any(
            not link.is_closed and isinstance(link.path, PeerPath) and link.path.peer_node_id == peer_node_id
            for link in self.links
        )


def _oldest(links: list[Link]) -> Link:
    """The one to evict: the oldest whose address is not validated, else the oldest."""
    return next((link for link in links if not link.address_validated), links[0])


def _bind_error(host: str, port: int) -> str | None:
    """Why binding fails, from a plain socket (uvloop's error carries no strerror)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or (os.strerror(exc.errno) if exc.errno else None)
    return None
