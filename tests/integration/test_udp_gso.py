"""Batched sends of the node's UDP socket (``UdpTransport.sendto_many``) on loopback: every datagram arrives
whole and in order whether the kernel cuts a GSO run or the transport falls back to one send per datagram,
and replies still leave from the address the request was sent to."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest

from kachery_p2p.daemon import udp


class Burst(asyncio.DatagramProtocol):
    """Answers each request with a burst: 20 datagrams of 1200 bytes and a shorter last one."""

    def __init__(self) -> None:
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        burst = [bytes([i]) * 1200 for i in range(20)] + [b"end:" + data]
        self.transport.sendto_many(burst, addr)


def _collect(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(2000) for _ in range(count)]


async def _ask(address: str, port: int) -> list[bytes]:
    """Send from a socket connected to (address, port): it only gets datagrams whose source is exactly that."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(3)
        client.connect((address, port))
        client.send(address.encode())
        return await asyncio.to_thread(_collect, client, 21)


def _expected(address: str) -> list[bytes]:
    return [bytes([i]) * 1200 for i in range(20)] + [b"end:" + address.encode()]


class RefusesGso:
    """A socket whose kernel refuses UDP_SEGMENT (as with EIO on a device without checksum offload)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refused = 0

    def sendmsg(self, buffers: Any, ancdata: Any = (), *args: Any) -> int:
        if any(level == udp.SOL_UDP for level, _, _ in ancdata):
            self.refused += 1
            raise OSError(errno.EIO, "Input/output error")
        return self._sock.sendmsg(buffers, ancdata, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_burst_arrives_whole_and_in_order_from_the_address_asked() -> None:
    if udp.UDP_SEGMENT is None:
        pytest.skip("no UDP GSO on this platform")

    async def main() -> None:
        transport, _ = await udp.open_udp(Burst, "0.0.0.0", 0)
        try:
            port = udp.local_address(transport)[1]
            for address in ("127.0.0.1", "127.0.0.2"):  # the second: GSO and IP_PKTINFO in one sendmsg
                assert await _ask(address, port) == _expected(address)
            assert transport.gso
            assert transport.stats["gso_sends"] == 2  # one system call per burst
            assert transport.stats["sent"] == 42
        finally:
            transport.close()

    asyncio.run(main())


def test_a_kernel_refusing_gso_gets_plain_sends_and_is_remembered() -> None:
    async def main() -> None:
        transport, _ = await udp.open_udp(Burst, "0.0.0.0", 0)
        refusing = RefusesGso(transport._sock)
        transport._sock = refusing  # type: ignore[assignment]
        try:
            port = udp.local_address(transport)[1]
            assert await _ask("127.0.0.2", port) == _expected("127.0.0.2")
            assert await _ask("127.0.0.1", port) == _expected("127.0.0.1")
            assert not transport.gso
            assert refusing.refused <= 1  # tried once at most, then remembered
            assert transport.stats["gso_sends"] == 0 and transport.stats["send_errors"] == 0
        finally:
            transport._sock = refusing._sock
            transport.close()

    asyncio.run(main())


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.got_all = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append(data)
        if len(self.seen) == 21:
            self.got_all.set()


def test_a_gso_burst_read_through_gro_is_cut_back_into_its_datagrams() -> None:
    """Loopback hands a GSO burst to a GRO socket as one read: the reader cuts it at the segment size."""

    async def main() -> None:
        server, _ = await udp.open_udp(Burst, "127.0.0.1", 0)
        client, collect = await udp.open_udp(Collect, "127.0.0.1", 0)
        try:
            client.sendto(b"127.0.0.1", udp.local_address(server))
            await asyncio.wait_for(collect.got_all.wait(), 5)  # type: ignore[attr-defined]
            assert collect.seen == _expected("127.0.0.1")  # type: ignore[attr-defined]
            assert client.stats["received"] == 21
            if client.gro and server.gso:
                assert client.stats["reads"] < 21  # fewer wake-ups than datagrams
        finally:
            server.close()
            client.close()

    asyncio.run(main())
