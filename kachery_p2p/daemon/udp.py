"""The node's one UDP socket as an asyncio datagram transport: dual-stack, answers from the address asked, reads
in batches.

Why not ``loop.create_datagram_endpoint``:

- Answer from the address asked. On a host with several addresses (a floating or failover IP, a second address
  of the interface, a 1:1 NAT) a socket bound to the wildcard lets the kernel pick the source of every reply:
  the primary address, which a NAT on the path drops as coming from a stranger. This transport learns each
  datagram's destination address (IP_PKTINFO / IPV6_RECVPKTINFO) and sends everything to that remote from
  that same local address (IP_PKTINFO / IPV6_PKTINFO on ``sendmsg``): STUN answers, QUIC, relay frames and
  punch probes alike, without any layer above knowing. The remote -> local table is bounded
  (``REPLY_TABLE_SIZE``, oldest entry dropped) since remotes are chosen by whoever sends to us.
- IPv6. With the default wildcard bind the socket is AF_INET6 with IPV6_V6ONLY off, so IPv4 and IPv6 share the
  one port; IPv4 addresses reach the protocol as plain "a.b.c.d" (never "::ffff:a.b.c.d"), so nothing above
  changes for IPv4 peers.
- One wake-up per burst: the reader drains up to ``READ_BATCH`` datagrams each time the socket is readable.
- UDP GRO where the kernel has it: datagrams of one flow that arrive together (a GSO burst of the peer) come up
  as one read with their segment size (a UDP_GRO control message) and are cut apart here, in order.
- One system call per burst sent: ``sendto_many`` hands a run of equal-size datagrams to one address (the last may
  be shorter) to the kernel in one ``sendmsg`` with a UDP_SEGMENT (GSO) control message, next to the IP_PKTINFO
  one; the kernel cuts it into datagrams (or the NIC does). Where the kernel refuses GSO (EIO from a device
  without checksum offload, ENOPROTOOPT/EINVAL/EOPNOTSUPP from an old kernel or another platform) the run is
  sent datagram by datagram and GSO stays off for this socket. Routed addresses (``route_via``) get plain sends.

Several ``--bind`` addresses: the socket stays the wildcard one and ``restrict`` makes it drop datagrams sent to any
other address; what it sends first to a new remote leaves from the first bound address of that family. One socket
keeps "answer from the address asked" exactly as above (no per-address socket to pick).

Platforms without IP_PKTINFO (or where it cannot be set) fall back to plain reads and kernel-chosen sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .udp_socket import (
    IP_PKTINFO,
    IPV6_PKTINFO,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    bind_udp,
    enable_gro,
    enable_pktinfo,
)

log = logging.getLogger("kachery_p2p.udp")

Address = tuple[str, int]
REPLY_TABLE_SIZE = 4096
READ_BATCH = 64
MAX_DATAGRAM = 65535
ANCILLARY_SIZE = socket.CMSG_SPACE(32) + socket.CMSG_SPACE(8)  # PKTINFO and the GRO segment size
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # one UDP payload before segmentation (IPv4 allows 65507)
# errno of a sendmsg refused because of the UDP_SEGMENT message itself: send plainly from then on
GSO_REFUSED = {errno.EIO, errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP}


def normalize(addr: Any) -> Address:
    """(host, port) of a socket address, with IPv4-mapped IPv6 addresses written as IPv4."""
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, addr[1]


class UdpTransport(asyncio.DatagramTransport):
    """A datagram transport over one non-blocking socket (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.DatagramProtocol,
                 pktinfo: bool) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._family = sock.family
        self.dual_stack = sock.family == socket.AF_INET6 and sock.getsockname()[0] == "::"
        self._pktinfo = pktinfo
        self._reply_from: dict[Address, str] = {}
        self._routes: dict[Address, Callable[[bytes], None]] = {}
        self._watched: dict[Address, float] = {}
        self._closing = False
        self._allowed: frozenset[str] = frozenset()  # empty: every address of the socket
        self._default_source: dict[bool, str] = {}  # IPv6? -> the source for a remote not heard from yet
        self.stats = {"received": 0, "sent": 0, "send_errors": 0, "not_bound": 0, "gso_sends": 0, "reads": 0}
        self.gro = False  # set by open_udp when the kernel coalesces reads
        self.gso = UDP_SEGMENT is not None and os.environ.get("KACHERY_P2P_UDP_GSO", "1") != "0"
        self._extra = {"socket": sock, "sockname": sock.getsockname()}
        loop.add_reader(sock.fileno(), self._on_readable)

    # -- asyncio.DatagramTransport --------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def restrict(self, addresses: Iterable[str]) -> None:
        """Listen only on ``addresses`` (several --bind on the wildcard socket): datagrams sent to any other
        address are dropped, and we never send from one. OSError where the socket cannot learn destinations."""
        allowed = list(dict.fromkeys(addresses))
        if not self._pktinfo:
            raise OSError("this system cannot tell which address a datagram was sent to (IP_PKTINFO)")
        self._allowed = frozenset(allowed)
        for address in reversed(allowed):
            self._default_source[":" in address] = address

    @property
    def bound_addresses(self) -> list[str]:
        """The addresses ``restrict`` allowed (empty: all)."""
        return sorted(self._allowed)

    # -- other ways than UDP (the relay's TCP transport) ------------------------------------------
    def route_via(self, addr: Address, send: Callable[[bytes], None]) -> None:
        """Send every datagram for ``addr`` through ``send`` instead of UDP (until ``unroute``)."""
        self._routes[addr] = send

    def unroute(self, addr: Address) -> None:
        self._routes.pop(addr, None)

    def routed(self, addr: Address) -> bool:
        return addr in self._routes

    def inject(self, data: bytes, addr: Address) -> None:
        """Deliver a datagram that came another way, as if received from ``addr``."""
        if not self._closing:
            self._protocol.datagram_received(data, addr)

    def watch(self, addr: Address) -> None:
        """Remember when a datagram last arrived from ``addr`` over UDP itself (see ``last_heard``)."""
        self._watched.setdefault(addr, 0.0)

    def last_heard(self, addr: Address) -> float:
        """``loop.time()`` of the last UDP datagram from a watched address (0.0: never)."""
        return self._watched.get(addr, 0.0)

    def send_udp(self, data: bytes, addr: Address) -> None:
        """Send over UDP even when ``addr`` is routed another way (to find out whether UDP works again)."""
        send = self._routes.pop(addr, None)
        try:
            self.sendto(data, addr)
        finally:
            if send is not None:
                self._routes[addr] = send

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing or addr is None:
            return
        remote = (addr[0], addr[1])
        if self._routes:
            send = self._routes.get(remote)
            if send is not None:
                send(bytes(data))
                self.stats["sent"] += 1
                return
        source = self._reply_from.get(remote) if self._pktinfo else None
        if source is None and self._allowed:
            source = self._default_source.get(":" in remote[0])
            if source is None:  # no bound address of that family
                self.stats["send_errors"] += 1
                return
        try:
            dest = self._sock_address(remote)
            if source is None:
                self._sock.sendto(data, dest)
            else:
                self._sock.sendmsg([data], [self._source_cmsg(source)], 0, dest)
            self.stats["sent"] += 1
        except (BlockingIOError, InterruptedError):
            self.stats["send_errors"] += 1  # a full buffer drops the datagram, as UDP may; QUIC retransmits
        except OSError as exc:
            self.stats["send_errors"] += 1
            if source is not None:  # the address may have gone away: forget it, the kernel picks next time
                self._reply_from.pop(remote, None)
            self._protocol.error_received(exc)

    def sendto_many(self, datagrams: Sequence[bytes], addr: Address) -> None:
        """Send ``datagrams`` in order to ``addr``: runs of equal size (the last of a run may be shorter) in one
        GSO ``sendmsg`` each where the kernel allows, else one by one as ``sendto``."""
        if len(datagrams) < 2 or not self.gso or self._closing or (self._routes and addr in self._routes):
            for data in datagrams:
                self.sendto(data, addr)
            return
        remote = (addr[0], addr[1])
        source = self._reply_from.get(remote) if self._pktinfo else None
        if source is None and self._allowed:
            source = self._default_source.get(":" in remote[0])
            if source is None:
                self.stats["send_errors"] += len(datagrams)
                return
        dest = self._sock_address(remote)
        cmsgs = [] if source is None else [self._source_cmsg(source)]
        count, start = len(datagrams), 0
        while start < count:
            size = len(datagrams[start])
            end, total = start + 1, size
            while end < count and end - start < GSO_MAX_SEGMENTS and total + size <= GSO_MAX_BYTES:
                last = len(datagrams[end])
                if last > size:
                    break
                end, total = end + 1, total + last
                if last < size:  # a shorter one can only end a run
                    break
            if end - start == 1 or not self.gso:
                for data in datagrams[start:end]:
                    self.sendto(data, addr)
            else:
                self._send_segments(datagrams[start:end], size, dest, cmsgs, remote, source)
            start = end

    def _send_segments(self, run: Sequence[bytes], size: int, dest: tuple[Any, ...],
                       cmsgs: list[tuple[int, int, bytes]], remote: Address, source: str | None) -> None:
        try:
            self._sock.sendmsg(run, [*cmsgs, (SOL_UDP, UDP_SEGMENT or 0, struct.pack("=H", size))], 0, dest)
            self.stats["sent"] += len(run)
            self.stats["gso_sends"] += 1
        except (BlockingIOError, InterruptedError):
            self.stats["send_errors"] += len(run)  # a full buffer drops them, as UDP may; QUIC retransmits
        except OSError as exc:
            if exc.errno in GSO_REFUSED:
                self.gso = False
                log.info("UDP GSO refused (%s): sending datagram by datagram", exc.strerror or exc)
                for data in run:
                    self.sendto(data, remote)
                return
            self.stats["send_errors"] += len(run)
            if source is not None:
                self._reply_from.pop(remote, None)
            self._protocol.error_received(exc)

    # -- internals --------------------------------------------------------------------------------
    def _sock_address(self, remote: Address) -> tuple[Any, ...]:
        if self._family != socket.AF_INET6:
            return remote
        host = remote[0]
        if ":" not in host:
            host = "::ffff:" + host
        return host, remote[1], 0, 0

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _source_cmsg(source: str) -> tuple[int, int, bytes]:
        """The control message that sends from ``source`` (built once per address, not per datagram)."""
        if ":" in source:
            return socket.IPPROTO_IPV6, IPV6_PKTINFO or 0, socket.inet_pton(socket.AF_INET6, source) + bytes(4)
        return socket.IPPROTO_IP, IP_PKTINFO or 0, struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4))

    def _destination(self, ancillary: list[tuple[int, int, bytes]]) -> str | None:
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
                return socket.inet_ntoa(data[8:12])
            if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
                host = socket.inet_ntop(socket.AF_INET6, data[:16])
                return host[7:] if host.startswith("::ffff:") and "." in host else host
        return None

    def _on_readable(self) -> None:
        # Per datagram only the read and the hand-over: where it came from and what it was sent to are
        # worked out again only when they differ from the previous datagram's (a transfer's run of datagrams
        # shares both), and the counter is added once per batch.
        sock, protocol, table, allowed = self._sock, self._protocol, self._reply_from, self._allowed
        last_source: Any = None
        last_ancillary: Any = None
        remote: Address = ("", 0)
        bound = True
        segment = count = 0
        try:
            for _ in range(READ_BATCH):
                if self._closing:
                    return
                try:
                    data, ancillary, _flags, source = sock.recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    protocol.error_received(exc)
                    return
                if source != last_source or ancillary != last_ancillary:
                    last_source, last_ancillary = source, ancillary
                    remote = normalize(source)
                    local = self._destination(ancillary) if ancillary else None
                    segment = _segment_size(ancillary) if ancillary else 0
                    bound = not allowed or local in allowed
                    if bound and local is not None and table.get(remote) != local:
                        table.pop(remote, None)
                        table[remote] = local
                        if len(table) > REPLY_TABLE_SIZE:
                            del table[next(iter(table))]
                if not bound:
                    self.stats["not_bound"] += 1  # sent to an address of this host we were told not to listen on
                    continue
                if self._watched and remote in self._watched:
                    self._watched[remote] = self._loop.time()
                if segment and len(data) > segment:  # several datagrams coalesced by GRO
                    for offset in range(0, len(data), segment):
                        count += 1
                        protocol.datagram_received(data[offset : offset + segment], remote)
                        if self._closing:
                            return
                    continue
                count += 1
                protocol.datagram_received(data, remote)
        finally:
            self.stats["received"] += count
            self.stats["reads"] += 1


def _segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The GRO segment size of a read (0: one datagram)."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
            return int.from_bytes(data[:4] if len(data) >= 4 else data[:2], sys.byteorder)
    return 0


async def open_udp(protocol_factory: Callable[[], asyncio.DatagramProtocol], host: str, port: int
                   ) -> tuple[UdpTransport, asyncio.DatagramProtocol]:
    """Bind and start reading; OSError when the address cannot be bound (the caller words the message)."""
    loop = asyncio.get_running_loop()
    sock = bind_udp(host, port)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    protocol = protocol_factory()
    transport = UdpTransport(loop, sock, protocol, enable_pktinfo(sock))
    transport.gro = enable_gro(sock)
    protocol.connection_made(transport)
    return transport, protocol


def local_address(transport: UdpTransport) -> Address:
    """(host, port) the socket is bound to, with the dual-stack wildcard written "0.0.0.0" as for IPv4."""
    host, port = normalize(transport.get_extra_info("sockname"))
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:
            host = "0.0.0.0"
    return host, port


async def resolve(host: str, port: int, dual_stack: bool) -> Address:
    """The address to send to for ``host``: IPv4 first where this host has an IPv4 route, else IPv6 (an
    IPv6-only network); only IPv4 on an IPv4 socket. OSError (socket.gaierror) when it does not resolve."""
    from .sysnet import default_route_ipv4

    family = socket.AF_UNSPEC if dual_stack else socket.AF_INET
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    if not infos:
        raise socket.gaierror(f"{host} has no address")
    prefer_v4 = default_route_ipv4() is not None
    infos.sort(key=lambda info: (info[0] == socket.AF_INET) != prefer_v4)
    return normalize(infos[0][4])
