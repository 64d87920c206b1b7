"""LAN discovery: signed announcements over IPv4 multicast (a thin asyncio pump).

All protocol logic (format, signature, expiry, replay protection) lives in
``channels/announcements.py``; this module only moves datagrams and keeps counters.

One UDP socket, bound to ``("", port)`` with SO_REUSEADDR and SO_REUSEPORT (``sysnet.share_port``) so
that several daemons on one machine share the port (Linux delivers every multicast datagram to all of them). It joins
the group on each configured interface, and sends each announcement once per interface (IP_MULTICAST_IF,
TTL 1: announcements never leave the link). A peer is dialed at (datagram source IP, quic_port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from kachery_p2p.daemon.deadline import within

from ..channels.announcements import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    MAX_RENDEZVOUS_IDS,
    Announcement,
    AnnouncementTracker,
    Signer,
    decode_announcement,
    encode_announcement,
)
from ..errors import RemoteProtocolError
from .sysnet import lan_ipv4_addresses, only_joined_groups, share_port

log = logging.getLogger("kachery_p2p.lan")

DEFAULT_GROUP = "239.255.73.117"  # organization-local scope (RFC 2365)
DEFAULT_PORT = 21011
DEFAULT_INTERVAL = 15.0
_JITTER = 0.1  # each period is interval * uniform(0.9, 1.1), so daemons started together spread out

OnAnnouncement = Callable[[Announcement, str], None]


class _LanProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: LanDiscovery) -> None:
        self.owner = owner
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("LAN socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class LanDiscovery:
    """Announce this node on the LAN and report valid announcements of other nodes.

    ``on_announcement(a, ip)`` is called for every accepted announcement (a node's first one and each
    newer one after it; replays, duplicates and our own are not reported). It must not block; its
    exceptions are logged and swallowed. ``stats`` counts: sent, received, accepted, rejected
    (malformed, bad signature, expired...), own, stale (replays, duplicates), errors, send_errors.

    With more than 16 rendezvous ids, each announcement carries the next 16 in a rotation, so every
    channel is announced at least every ceil(n / 16) intervals.
    """

    def __init__(
        self,
        identity: Signer,
        label: str,
        quic_port: Callable[[], int],
        rendezvous_ids: Callable[[], list[str]],
        on_announcement: OnAnnouncement,
        group: str = DEFAULT_GROUP,
        port: int = DEFAULT_PORT,
        interfaces: Sequence[str] = ("127.0.0.1",),
        interval: float = DEFAULT_INTERVAL,
        lifetime: float | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.label = label
        self.group = group
        self.port = port
        self.interfaces = list(interfaces)
        self.interval = interval
        # Survives three lost announcements; never more than the protocol allows.
        self.lifetime = lifetime if lifetime is not None else min(MAX_LIFETIME, max(DEFAULT_LIFETIME, 4 * interval))
        self.tracker = AnnouncementTracker()
        self.stats: dict[str, int] = dict.fromkeys(
            ("sent", "received", "accepted", "rejected", "own", "stale", "errors", "send_errors"), 0
        )
        self.joined_interfaces: list[str] = []
        self._quic_port = quic_port
        self._rendezvous_ids = rendezvous_ids
        self._on_announcement = on_announcement
        self._clock = clock
        self._rng = rng or random.Random()
        self._sock: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _LanProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_timestamp = 0.0
        self._rotation = 0

    async def start(self) -> None:
        """Open the socket, join the group, and start announcing (the first one right away)."""
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            share_port(sock)
            only_joined_groups(sock)
            sock.bind(("", self.port))
            group = socket.inet_aton(self.group)
            for iface in self.interfaces:
                try:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + socket.inet_aton(iface))
                    self.joined_interfaces.append(iface)
                except OSError as exc:
                    log.warning("LAN discovery: cannot join %s on %s: %s", self.group, iface, exc)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setblocking(False)
            transport, protocol = await loop.create_datagram_endpoint(lambda: _LanProtocol(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._transport = transport
        self._protocol = protocol
        self._task = loop.create_task(self._run(), name="lan-announcer")

    async def stop(self) -> None:
        """Stop announcing and close the socket; no callback runs after this returns."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        transport, self._transport = self._transport, None
        protocol, self._protocol = self._protocol, None
        self._sock = None
        if transport is not None:
            transport.close()
            if protocol is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(asyncio.shield(protocol.closed), 5.0)

    async def __aenter__(self) -> LanDiscovery:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            self.announce_now()
            self.tracker.forget_expired(self._clock())
            await asyncio.sleep(self.interval * self._rng.uniform(1 - _JITTER, 1 + _JITTER))

    def _pick_ids(self) -> list[str]:
        ids = list(dict.fromkeys(rid.lower() for rid in self._rendezvous_ids()))
        if len(ids) <= MAX_RENDEZVOUS_IDS:
            return ids
        start = self._rotation % len(ids)
        self._rotation = start + MAX_RENDEZVOUS_IDS
        return (ids[start:] + ids[:start])[:MAX_RENDEZVOUS_IDS]

    def announce_now(self) -> bool:
        """Send one announcement on every interface now (e.g. after joining a channel).

        True if it went out on at least one interface. Never raises.
        """
        sock = self._sock
        if sock is None:
            return False
        try:
            # Strictly increasing, even if the wall clock steps back: peers drop older timestamps.
            now = max(self._clock(), self._last_timestamp + 0.001)
            data = encode_announcement(
                self.identity, self.label, self._quic_port(), self._pick_ids(), now, self.lifetime
            )
        except Exception:
            self.stats["send_errors"] += 1
            log.exception("LAN discovery: cannot build an announcement")
            return False
        self._last_timestamp = now
        sent = False
        destination = (self.group, self.port)
        for iface in self.interfaces:
            try:
                # setsockopt + sendto run back to back in the loop thread: nothing interleaves.
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
                sock.sendto(data, destination)
            except OSError as exc:
                self.stats["send_errors"] += 1
                log.debug("LAN discovery: cannot send on %s: %s", iface, exc)
            else:
                self.stats["sent"] += 1
                sent = True
        return sent

    def _datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self._transport is None:
            return
        self.stats["received"] += 1
        try:
            now = self._clock()
            try:
                announcement = decode_announcement(data, now)
            except RemoteProtocolError as exc:
                self.stats["rejected"] += 1
                log.debug("LAN discovery: dropped a datagram from %s: %s", addr[0], exc)
                return
            if announcement.node_id == self.identity.node_id:
                self.stats["own"] += 1
                return
            if not self.tracker.accept(announcement, now):
                self.stats["stale"] += 1
                return
            self.stats["accepted"] += 1
            self._on_announcement(announcement, str(addr[0]))
        except Exception:
            self.stats["errors"] += 1
            log.exception("LAN discovery: error while handling a datagram from %s", addr[0])


def default_lan_interfaces() -> list[str]:
    """IPv4 addresses of the non-loopback interfaces, then 127.0.0.1 (``sysnet``: any platform)."""
    return [*lan_ipv4_addresses(), "127.0.0.1"]
