"""The node's UDP socket (kachery_p2p.daemon.udp) on loopback: replies leave from the address a datagram was sent
to, IPv4 and IPv6 share the port, and the remote -> local table stays bounded."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from kachery_p2p.daemon import udp


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.seen: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, addr))
        self.transport.sendto(b"re:" + data, addr)


def _client(family: int, server: tuple[str, int]) -> socket.socket:
    """A connected client socket: the kernel hands it only datagrams whose source is exactly ``server``."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect(server)
    return sock


async def _ask(sock: socket.socket, payload: bytes) -> bytes:
    sock.send(payload)
    return await asyncio.to_thread(sock.recv, 100)


def test_reply_leaves_from_the_address_the_request_was_sent_to() -> None:
    """127.0.0.2 is a second address of this host; without IP_PKTINFO the reply would come from 127.0.0.1."""

    async def main() -> None:
        transport, echo = await udp.open_udp(Echo, "0.0.0.0", 0)
        try:
            port = udp.local_address(transport)[1]
            for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
                with _client(socket.AF_INET, (address, port)) as client:
                    assert await _ask(client, address.encode()) == b"re:" + address.encode()
            assert all(addr[0] == "127.0.0.1" for _, addr in echo.seen)  # plain IPv4, never ::ffff:
        finally:
            transport.close()

    asyncio.run(main())


def test_ipv4_and_ipv6_share_the_port() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")

    async def main() -> None:
        transport, echo = await udp.open_udp(Echo, "0.0.0.0", 0)
        try:
            host, port = udp.local_address(transport)
            assert host == "0.0.0.0"
            try:
                v6 = _client(socket.AF_INET6, ("::1", port))
            except OSError:
                pytest.skip("no IPv6 loopback")
            with v6, _client(socket.AF_INET, ("127.0.0.1", port)) as v4:
                assert await _ask(v6, b"six") == b"re:six"
                assert await _ask(v4, b"four") == b"re:four"
            assert [addr[0] for _, addr in echo.seen] == ["::1", "127.0.0.1"]
        finally:
            transport.close()

    asyncio.run(main())


def test_reply_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp, "REPLY_TABLE_SIZE", 3)

    async def main() -> None:
        transport, _echo = await udp.open_udp(Echo, "0.0.0.0", 0)
        try:
            port = udp.local_address(transport)[1]
            for i in range(6):
                with _client(socket.AF_INET, ("127.0.0.2", port)) as client:
                    assert await _ask(client, b"%d" % i) == b"re:%d" % i
            assert len(transport._reply_from) <= 3
        finally:
            transport.close()

    asyncio.run(main())


def test_a_specific_ipv4_bind_stays_ipv4() -> None:
    async def main() -> None:
        transport, _ = await udp.open_udp(Echo, "127.0.0.1", 0)
        try:
            assert transport.get_extra_info("socket").family == socket.AF_INET
            with _client(socket.AF_INET, udp.local_address(transport)) as client:
                assert await _ask(client, b"x") == b"re:x"
        finally:
            transport.close()

    asyncio.run(main())
