"""Where a link's datagrams really go (direct or through a relay), and how large they may be.

aioquic sees one fixed address per connection; the path underneath decides the real destination per
datagram, so a connection can be relayed, and move to a punched direct path and back, without aioquic
knowing (iroh's "magicsock" idea). The decisions are ``peering.path.PathSelector``'s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Mapping

from ..ids import format_address
from ..peering.path import PathKind, PathSelector
from ..relay.frames import FRAME_TOKEN_SIZE, MAX_PAYLOAD, to_relay_header
from .sysnet import route_mtu

Address = tuple[str, int]

LOOPBACK_DATAGRAM_SIZE = 16000  # aioquic breaks above 16383
DEFAULT_DATAGRAM_SIZE = 1350  # safe on internet paths (aioquic has no path-MTU discovery)
RELAYED_DATAGRAM_SIZE = 1200  # fits a relay frame on any path (MAX_PAYLOAD is 1439)
assert RELAYED_DATAGRAM_SIZE <= MAX_PAYLOAD - FRAME_TOKEN_SIZE


def datagram_size_for(addr: Address) -> int:
    """The QUIC packet size for a direct path: as large as the local route allows on loopback and
    private networks (fewer packets is what makes Python QUIC faster), the safe default elsewhere."""
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        return DEFAULT_DATAGRAM_SIZE
    if ip.is_loopback:
        return LOOPBACK_DATAGRAM_SIZE
    if ip.version != 4 or not (ip.is_private or ip.is_link_local):
        return DEFAULT_DATAGRAM_SIZE
    mtu = route_mtu(addr)
    if mtu is None:
        return DEFAULT_DATAGRAM_SIZE
    return max(1200, min(LOOPBACK_DATAGRAM_SIZE, mtu - 28))


class Path:
    """A direct path to one UDP address (a connection dialed or accepted directly)."""

    kind: PathKind = "direct"

    def __init__(self, addr: Address) -> None:
        self.addr = addr
        self.bytes = {"sent": 0, "received": 0}

    def send(self, transport: asyncio.DatagramTransport, data: bytes) -> None:
        self.bytes["sent"] += len(data)
        transport.sendto(data, self.addr)

    def send_many(self, transport: asyncio.DatagramTransport, datagrams: list[bytes]) -> None:
        """``send`` for a burst: one call to the transport (``UdpTransport.sendto_many`` batches it)."""
        self.bytes["sent"] += sum(map(len, datagrams))
        many = getattr(transport, "sendto_many", None)
        if many is None:
            for data in datagrams:
                transport.sendto(data, self.addr)
        else:
            many(datagrams, self.addr)

    def received(self, via: PathKind, source: Address, size: int) -> None:
        self.bytes["received"] += size

    def describe(self) -> str:
        return format_address(self.addr)

    def bytes_by_path(self) -> dict[str, dict[str, int]]:
        return {"direct": dict(self.bytes)}


class PeerPath(Path):
    """A peer connection that starts through a relay and may move to a punched direct address and
    back (``peering.path.PathSelector`` decides, per datagram). The relay copies our end-to-end
    encrypted QUIC packets to the peer inside relay frames, with the frame token the relay gave us over
    our session with it (``frame_tokens``, by relay address; issue 10 #14) once we have one."""

    def __init__(
        self, relay_addr: Address, peer_node_id: str, frame_tokens: Mapping[Address, bytes] | None = None
    ) -> None:
        super().__init__(relay_addr)
        self.relay_addr = relay_addr
        self.peer_node_id = peer_node_id
        self.selector = PathSelector(relay=relay_addr)
        self._frame_tokens: Mapping[Address, bytes] = frame_tokens if frame_tokens is not None else {}
        self._token = b""
        self._prefix = to_relay_header(peer_node_id)

    @property
    def kind(self) -> PathKind:  # type: ignore[override]
        return self.selector.kind

    def direct_found(self, address: Address) -> bool:
        changed = self.selector.direct_found(address, time.monotonic())
        self.addr = self.selector.destination
        return changed

    def send(self, transport: asyncio.DatagramTransport, data: bytes) -> None:
        if self.selector.datagram_sent(len(data), time.monotonic()) == "direct":
            self.addr = self.selector.destination
            transport.sendto(data, self.addr)
        else:
            self.addr = self.relay_addr
            token = self._frame_tokens.get(self.relay_addr, b"")
            if token != self._token:  # the relay issued a new one (a new registration)
                self._token, self._prefix = token, to_relay_header(self.peer_node_id, token)
            transport.sendto(self._prefix + data, self.relay_addr)

    def send_many(self, transport: asyncio.DatagramTransport, datagrams: list[bytes]) -> None:
        for data in datagrams:  # the selector decides per datagram
            self.send(transport, data)

    def received(self, via: PathKind, source: Address, size: int) -> None:
        self.selector.datagram_received(via, source, size, time.monotonic())

    def describe(self) -> str:
        if self.selector.kind == "direct" and self.selector.direct is not None:
            return f"{format_address(self.selector.direct)} (punched; relay {format_address(self.relay_addr)})"
        return f"relay {format_address(self.relay_addr)}"

    def bytes_by_path(self) -> dict[str, dict[str, int]]:
        return {kind: dict(counts) for kind, counts in self.selector.bytes.items()}


def relay_stable_address(relay_addr: Address, peer_node_id: str) -> Address:
    """The fixed address aioquic sees for a peer reached through a relay (never a real socket
    address): it stays the same when the connection moves to a direct path."""
    return (f"relay-{relay_addr[0]}-{relay_addr[1]}-{peer_node_id[:16]}", 0)
