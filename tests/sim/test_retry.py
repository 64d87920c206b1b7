"""Issue 10 #1: QUIC address validation (Retry) under load. A flood of forged Initials (they never
read what we send back) can no longer push a real peer's handshake out of the half-open table: past a
quarter of the table, or half a source's share, Initials without a token get a stateless Retry and
only a client that echoes a valid token gets a slot. Not under load: no Retry, no extra round trip.

In memory: the product's QuicEndpoint on both sides, real aioquic clients, a fake UDP network."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

from kachery_p2p.daemon import endpoint as endpoint_module
from kachery_p2p.daemon.endpoint import Address, Link, QuicEndpoint
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.quic.settings import quic_configuration

SERVER = NodeIdentity.from_private_bytes(bytes(range(32)))
CLIENT = NodeIdentity.from_private_bytes(bytes(range(32, 64)))
SERVER_ADDR: Address = ("192.0.2.10", 4433)
PEER_ADDR: Address = ("203.0.113.5", 50000)
DELAY = 0.005  # one way: a round trip of 10 ms


@dataclass
class FakeNet:
    hosts: dict[Address, QuicEndpoint] = field(default_factory=dict)

    def attach(self, endpoint: QuicEndpoint, addr: Address) -> None:
        self.hosts[addr] = endpoint
        endpoint.connection_made(FakeTransport(self, addr))  # type: ignore[arg-type]

    def route(self, data: bytes, src: Address, dst: Address) -> None:
        target = self.hosts.get(dst)
        if target is not None:
            asyncio.get_running_loop().call_later(DELAY, _deliver, target, data, src)


def _deliver(target: QuicEndpoint, data: bytes, src: Address) -> None:
    if target.transport is not None:
        target.datagram_received(data, src)


@dataclass
class FakeTransport:
    net: FakeNet
    addr: Address

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.net.route(bytes(data), self.addr, (addr[0], addr[1]))

    def close(self) -> None:
        pass


def client_initial(token: bytes = b"") -> tuple[bytes, bytes]:
    """A real client's first datagram (with ``token`` echoed) and its destination connection id."""
    config = quic_configuration(CLIENT, is_client=True)
    config.token = token
    conn = QuicConnection(configuration=config)
    conn.connect(SERVER_ADDR, now=time.monotonic())
    data, _ = conn.datagrams_to_send(now=time.monotonic())[0]
    return data, pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid


TEMPLATE, _ = client_initial()


def forged_initial() -> bytes:
    """An Initial nobody can complete: a fresh destination CID, so it needs its own slot."""
    data = bytearray(TEMPLATE)
    data[6:14] = os.urandom(8)
    return bytes(data)


class Collect:
    """A stream handler gathering what the peer sent."""

    def __init__(self) -> None:
        self.data = b""
        self.done = asyncio.get_running_loop().create_future()

    def on_data(self, data: bytes, end: bool) -> None:
        self.data += data
        if end and not self.done.done():
            self.done.set_result(self.data)

    def on_reset(self, error: Exception) -> None:
        pass


def build() -> tuple[FakeNet, QuicEndpoint, QuicEndpoint, list[Link]]:
    """A server whose accepted links count as authenticated (``established``) once the peer's first
    stream (standing in for its authentication message) arrives, as the session does."""
    net = FakeNet()
    accepted: list[Link] = []
    server = QuicEndpoint(SERVER, on_incoming=accepted.append)
    client = QuicEndpoint(CLIENT, on_incoming=lambda link: None)
    net.attach(server, SERVER_ADDR)
    net.attach(client, PEER_ADDR)

    def on_incoming(link: Link) -> None:
        accepted.append(link)
        first = Collect()
        link.on_new_stream = lambda stream_id: first
        first.done.add_done_callback(lambda _: server.established(link))
        link.stream = first  # type: ignore[attr-defined]

    server.on_incoming = on_incoming
    return net, server, client, accepted


async def authenticate(client: QuicEndpoint, server: QuicEndpoint, accepted: list[Link]) -> Link:
    """Connect, complete the handshake and deliver a first message the server reads: the server's
    link for the peer is then established (no longer half-open) and alive."""
    link = client.connect(SERVER_ADDR)
    await link.handshake
    link.send(link.open_stream(None), b"auth message", end=True)
    while True:
        for server_link in accepted:
            stream = server_link.stream  # type: ignore[attr-defined]
            if server_link.addr == PEER_ADDR and stream.done.done() and not server_link.is_closed:
                assert stream.data == b"auth message"
                return link
        await asyncio.sleep(0.002)


async def flood(server: QuicEndpoint, sources: Any, per_tick: int, ticks: int) -> None:
    for _ in range(ticks):
        for _ in range(per_tick):
            server.datagram_received(forged_initial(), next(sources))
        await asyncio.sleep(0.001)


def many_sources() -> Any:
    rng = random.Random(1)
    while True:
        yield (f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65536))


def from_the_peers_ip() -> Any:  # forged with the real peer's IP, other ports
    rng = random.Random(2)
    while True:
        yield (PEER_ADDR[0], rng.randrange(1024, 65536))


@pytest.mark.parametrize("sources", [many_sources, from_the_peers_ip], ids=["many sources", "the peer's ip"])
def test_a_real_peer_connects_promptly_during_a_flood_of_forged_initials(sources: Any) -> None:
    async def main() -> None:
        _, server, client, accepted = build()
        # the attack first: 520 forged Initials
        await flood(server, sources(), per_tick=52, ticks=10)
        # then the flood goes on while a real peer connects: it must get in within a few round trips
        flooding = asyncio.ensure_future(flood(server, sources(), per_tick=130, ticks=400))
        started = time.monotonic()
        try:
            link = await asyncio.wait_for(authenticate(client, server, accepted), 2.0)
        finally:
            elapsed = time.monotonic() - started
            flooding.cancel()
        assert link.conn._retry_count == 1  # it went through a Retry
        assert server.stats["retry_sent"] >= 1 and server.stats["retry_validated"] == 1
        assert len(server._half_open) <= endpoint_module.MAX_HALF_OPEN // 4 + 1, "forged Initials held slots"
        print(f"connected in {elapsed * 1000:.0f} ms during the flood; server stats {server.stats}")
        server.close()
        client.close()

    asyncio.run(main())


def test_not_under_load_a_connect_has_no_retry_and_no_extra_round_trip() -> None:
    async def main() -> None:
        _, server, client, accepted = build()
        link = await asyncio.wait_for(authenticate(client, server, accepted), 2.0)
        assert link.conn._retry_count == 0
        assert server.stats["retry_sent"] == 0 and len(accepted) == 1
        server.close()
        client.close()

    asyncio.run(main())


def test_our_client_follows_a_retry_through_the_endpoint() -> None:
    async def main() -> None:
        _, server, client, accepted = build()
        server.retry_policy.require_retry = lambda total, from_source, now: True  # type: ignore[method-assign]
        link = await asyncio.wait_for(authenticate(client, server, accepted), 2.0)
        assert link.conn._retry_count == 1
        assert server.stats["retry_sent"] == 1 and server.stats["retry_validated"] == 1
        (server_link,) = accepted
        assert server_link.address_validated and server_link not in server._half_open
        server.close()
        client.close()

    asyncio.run(main())


def initial_with_token(mint: Any) -> bytes:
    """A real client's first Initial echoing ``mint(its destination cid)``."""
    config = quic_configuration(CLIENT, is_client=True)
    config.token = b"placeholder"
    conn = QuicConnection(configuration=config)
    conn._peer_token = mint(conn._peer_cid.cid)  # as if a Retry from us had carried it
    conn.connect(SERVER_ADDR, now=time.monotonic())
    return conn.datagrams_to_send(now=time.monotonic())[0][0]


@pytest.mark.parametrize("case", ["valid", "forged", "expired", "other address", "other connection id"])
def test_only_an_initial_echoing_a_valid_token_gets_a_slot(case: str) -> None:
    async def main() -> None:
        _, server, _, accepted = build()
        tokens, now, odcid = server.retry_tokens, time.monotonic(), os.urandom(8)
        mint = {
            "valid": lambda cid: tokens.mint(PEER_ADDR, odcid, cid, now),
            "forged": lambda cid: os.urandom(42),
            "expired": lambda cid: tokens.mint(PEER_ADDR, odcid, cid, now - tokens.lifetime - 0.5),
            "other address": lambda cid: tokens.mint(("203.0.113.6", PEER_ADDR[1]), odcid, cid, now),
            "other connection id": lambda cid: tokens.mint(PEER_ADDR, odcid, os.urandom(8), now),
        }[case]
        server.datagram_received(initial_with_token(mint), PEER_ADDR)
        if case == "valid":
            (link,) = accepted
            assert link.address_validated and server.stats["retry_validated"] == 1
        else:
            assert accepted == [] and server.stats["bad_token"] == 1 and not server.links
        server.close()

    asyncio.run(main())
