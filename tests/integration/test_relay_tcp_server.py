"""The relay's TLS/TCP transport on loopback: a stream's datagrams reach the relay's socket protocol as from one
address and its answers go back down the stream; one source cannot hold more than MAX_PER_SOURCE streams."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from kachery_p2p.daemon import relay_tcp, udp
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.relay.stream import Deframer, encode_frame


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.append(addr)
        self.transport.sendto(b"re:" + data, addr)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=relay_tcp.client_context())


def test_datagrams_cross_the_stream_both_ways_and_sources_are_capped() -> None:
    async def main() -> None:
        transport, echo = await udp.open_udp(Echo, "127.0.0.1", 0)
        server = relay_tcp.RelayTcpServer(transport, NodeIdentity.generate())
        await server.start("127.0.0.1", [0])
        port = server._servers[0].sockets[0].getsockname()[1]
        try:
            reader, writer = await _open(port)
            writer.write(encode_frame(b"hello") + encode_frame(b"again"))
            deframer, got = Deframer(), []
            while len(got) < 2:
                got += deframer.feed(await asyncio.wait_for(reader.read(100), 5))
            assert got == [b"re:hello", b"re:again"]
            assert len(set(echo.sources)) == 1 and echo.sources[0][0].startswith("ff3e:")  # never a real source
            extra = [await _open(port) for _ in range(relay_tcp.MAX_PER_SOURCE)]
            assert await asyncio.wait_for(extra[-1][0].read(10), 5) == b""  # the 9th stream is closed at once
            assert server.stats["refused"] == 1
            for _, w in [*extra, (reader, writer)]:
                w.close()
        finally:
            await server.stop()
            transport.close()

    asyncio.run(main())


def test_a_stream_that_is_not_framed_is_closed() -> None:
    async def main() -> None:
        transport, _ = await udp.open_udp(Echo, "127.0.0.1", 0)
        server = relay_tcp.RelayTcpServer(transport, NodeIdentity.generate())
        await server.start("127.0.0.1", [0])
        port = server._servers[0].sockets[0].getsockname()[1]
        try:
            reader, writer = await _open(port)
            writer.write(b"\x00\x00garbage")
            try:
                data = await asyncio.wait_for(reader.read(10), 5)
            except (ssl.SSLError, ConnectionResetError):
                data = b""  # closed hard: closed all the same
            assert data == b""
            writer.close()
        finally:
            await server.stop()
            transport.close()

    asyncio.run(main())
