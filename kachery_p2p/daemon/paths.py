"""Where a link's datagrams really go (direct or through a relay), and how large they may be.

aioquic sees one fixed address per connection; the path underneath decides the real destination,
so a connection can be relayed without aioquic knowing (iroh's "magicsock" idea).
"""

from __future__ import annotations

import asyncio
import ipaddress

from ..relay.frames import MAX_PAYLOAD, to_relay_header
from .sysnet import route_mtu

Address = tuple[str, int]

LOOPBACK_DATAGRAM_SIZE = 16000  # aioquic breaks above 16383
DEFAULT_DATAGRAM_SIZE = 1350  # safe on internet paths (aioquic has no path-MTU discovery)
RELAYED_DATAGRAM_SIZE = 1200  # fits a relay frame on any path (MAX_PAYLOAD is 1439)
assert RELAYED_DATAGRAM_SIZE <= MAX_PAYLOAD


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
    """Where a link's datagrams go: straight to a UDP address, or wrapped for a relay."""

    kind = "direct"

    def __init__(self, addr: Address) -> None:
        self.addr = addr

    def send(self, transport: asyncio.DatagramTransport, data: bytes) -> None:
        transport.sendto(data, self.addr)

    def describe(self) -> str:
        host, port = self.addr
        return f"{host}:{port}"


class RelayPath(Path):
    """Through a relay: the relay copies our end-to-end encrypted QUIC packets to the peer."""

    kind = "relayed"

    def __init__(self, relay_addr: Address, peer_node_id: str) -> None:
        super().__init__(relay_addr)
        self.peer_node_id = peer_node_id
        self._prefix = to_relay_header(peer_node_id)

    def send(self, transport: asyncio.DatagramTransport, data: bytes) -> None:
        transport.sendto(self._prefix + data, self.addr)

    def describe(self) -> str:
        host, port = self.addr
        return f"relay {host}:{port}"


def relay_stable_address(relay_addr: Address, peer_node_id: str) -> Address:
    """The fixed address aioquic sees for a relayed peer (never a real socket address)."""
    return (f"relay-{relay_addr[0]}-{relay_addr[1]}-{peer_node_id[:16]}", 0)
