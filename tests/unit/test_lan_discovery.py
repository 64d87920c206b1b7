"""LAN discovery over real multicast on the loopback interface only (never out of other interfaces)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

from kachery_p2p.channels.announcements import Announcement, encode_announcement
from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.daemon.lan import DEFAULT_GROUP, LanDiscovery, default_lan_interfaces
from kachery_p2p.quic.identity import NodeIdentity

LOOPBACK = "127.0.0.1"
DEADLINE = 10.0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def _send_to_group(data: bytes, port: int) -> None:
    """Multicast one datagram out of the loopback interface only."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        s.sendto(data, (DEFAULT_GROUP, port))


async def _until(condition: Callable[[], bool], event: asyncio.Event | None = None) -> None:
    """Wait (at most DEADLINE) for ``condition``: re-checked each time ``event`` is set, else polled."""

    async def wait() -> None:
        while not condition():
            if event is None:
                await asyncio.sleep(0.01)
            else:
                await event.wait()
                event.clear()

    await asyncio.wait_for(wait(), DEADLINE)


class Peer:
    def __init__(self, port: int, quic_port: int, channels: list[str], seed: int) -> None:
        self.identity = NodeIdentity.from_private_bytes(bytes([seed]) * 32)
        self.rendezvous = [rendezvous_id(name) for name in channels]
        self.seen: list[tuple[Announcement, str]] = []
        self.changed = asyncio.Event()
        self.lan = LanDiscovery(
            self.identity,
            label=f"peer-{seed}",
            quic_port=lambda: quic_port,
            rendezvous_ids=lambda: list(self.rendezvous),
            on_announcement=self._on_announcement,
            port=port,
            interfaces=[LOOPBACK],
            interval=0.2,
        )

    def _on_announcement(self, a: Announcement, ip: str) -> None:
        self.seen.append((a, ip))
        self.changed.set()

    def saw(self, node_id: str) -> list[tuple[Announcement, str]]:
        return [(a, ip) for a, ip in self.seen if a.node_id == node_id]


def _run_pair(body: Callable[[Peer, Peer, int], Awaitable[None]], b_channels: list[str] | None = None) -> None:
    async def main() -> None:
        port = _free_udp_port()
        a = Peer(port, 4433, ["shared", "only-a"], seed=1)
        b = Peer(port, 5544, b_channels if b_channels is not None else ["shared", "only-b"], seed=2)
        try:
            await a.lan.start()
            await b.lan.start()
            await body(a, b, port)
        finally:
            await a.lan.stop()
            await b.lan.stop()

    asyncio.run(main())


def test_two_nodes_discover_each_other() -> None:
    async def body(a: Peer, b: Peer, port: int) -> None:
        await _until(lambda: bool(a.saw(b.identity.node_id)), a.changed)
        await _until(lambda: bool(b.saw(a.identity.node_id)), b.changed)
        seen_b, ip = a.saw(b.identity.node_id)[0]
        assert ip == LOOPBACK
        assert (seen_b.quic_port, seen_b.label) == (5544, "peer-2")
        assert list(seen_b.rendezvous_ids) == b.rendezvous
        seen_a, ip = b.saw(a.identity.node_id)[0]
        assert ip == LOOPBACK
        assert seen_a.quic_port == 4433
        assert list(seen_a.rendezvous_ids) == a.rendezvous
        # Each node hears its own announcements too (multicast loop) and ignores them.
        await _until(lambda: a.lan.stats["own"] > 0)
        assert not a.saw(a.identity.node_id)
        assert a.lan.stats["sent"] > 0 and a.lan.stats["accepted"] > 0
        assert a.lan.stats["rejected"] == 0 and a.lan.stats["errors"] == 0
        # Periodic re-announcements arrive as newer announcements.
        await _until(lambda: len(a.saw(b.identity.node_id)) >= 3, a.changed)
        stamps = [x.timestamp for x, _ in a.saw(b.identity.node_id)]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    _run_pair(body)


def test_garbage_and_replays_are_dropped_and_discovery_goes_on() -> None:
    async def body(a: Peer, b: Peer, port: int) -> None:
        await _until(lambda: bool(a.saw(b.identity.node_id)), a.changed)
        rejected = a.lan.stats["rejected"]
        _send_to_group(b"\x00garbage" * 10, port)
        _send_to_group(b"KP2PLAN1{}" + b"\x00" * 64, port)
        await _until(lambda: a.lan.stats["rejected"] >= rejected + 2)
        assert b.lan.stats["rejected"] >= 2
        # A validly signed but older announcement of b (a replay) must not be reported.
        stale = encode_announcement(b.identity, "replayed", 6666, [], time.time() - 30)
        stale_count = a.lan.stats["stale"]
        _send_to_group(stale, port)
        await _until(lambda: a.lan.stats["stale"] > stale_count)
        assert all(x.quic_port == 5544 for x, _ in a.saw(b.identity.node_id))
        # Still working: a fresh announcement (e.g. after a channel join) gets through.
        b.rendezvous.append(rendezvous_id("joined-later"))
        assert b.lan.announce_now()
        await _until(
            lambda: rendezvous_id("joined-later") in a.saw(b.identity.node_id)[-1][0].rendezvous_ids, a.changed
        )
        assert a.lan.stats["errors"] == 0

    _run_pair(body)


def test_more_than_16_channels_are_announced_in_rotation() -> None:
    many = [f"channel-{i}" for i in range(20)]

    async def body(a: Peer, b: Peer, port: int) -> None:
        def union() -> set[str]:
            return {rid for x, _ in a.saw(b.identity.node_id) for rid in x.rendezvous_ids}

        await _until(lambda: union() == set(b.rendezvous), a.changed)
        assert all(len(x.rendezvous_ids) == 16 for x, _ in a.saw(b.identity.node_id))

    _run_pair(body, b_channels=many)


def test_callback_errors_are_contained_and_stop_is_clean() -> None:
    async def main() -> None:
        port = _free_udp_port()
        a = Peer(port, 4433, ["x"], seed=3)
        calls: list[str] = []

        def broken(ann: Announcement, ip: str) -> None:
            calls.append(ip)
            raise RuntimeError("callback bug")

        b = LanDiscovery(
            NodeIdentity.from_private_bytes(b"\x04" * 32),
            "b",
            lambda: 1,
            lambda: [],
            broken,
            port=port,
            interval=0.2,
        )
        try:
            await b.start()
            await a.lan.start()
            await _until(lambda: b.stats["errors"] >= 2)
            assert calls
        finally:
            await a.lan.stop()
            await b.stop()
        assert not b.announce_now()
        await b.stop()  # idempotent

    asyncio.run(main())


def test_default_lan_interfaces_includes_loopback() -> None:
    interfaces = default_lan_interfaces()
    assert LOOPBACK in interfaces
    for address in interfaces:
        socket.inet_aton(address)
