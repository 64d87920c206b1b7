"""Issue 10 #1: a flood of Initials no longer locks new peers out (half-open connections bounded per
source and in total, oldest dropped). In memory: Initials from real aioquic clients, no network."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aioquic.quic.connection import QuicConnection

from kachery_p2p.daemon import endpoint as endpoint_module
from kachery_p2p.daemon.endpoint import Link, QuicEndpoint
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.quic.settings import quic_configuration

SERVER = NodeIdentity.from_private_bytes(bytes(range(32)))
CLIENT = NodeIdentity.from_private_bytes(bytes(range(32, 64)))


class Sink:
    def sendto(self, data: bytes, addr: Any = None) -> None:
        pass

    def close(self) -> None:
        pass


def without_retry(endpoint: QuicEndpoint) -> None:
    """The bounds themselves, as for clients that did echo a Retry token (tests/sim/test_retry.py)."""
    endpoint.retry_policy.require_retry = lambda total, from_source, now: False  # type: ignore[method-assign]


def initial() -> bytes:
    conn = QuicConnection(configuration=quic_configuration(CLIENT, is_client=True))
    conn.connect(("10.0.0.1", 4433), now=time.monotonic())
    data, _ = conn.datagrams_to_send(now=time.monotonic())[0]
    assert len(data) >= 1200
    return data


def test_initials_from_one_source_cannot_fill_the_table() -> None:
    async def main() -> None:
        accepted: list[Link] = []
        endpoint = QuicEndpoint(SERVER, on_incoming=accepted.append)
        endpoint.connection_made(Sink())  # type: ignore[arg-type]
        without_retry(endpoint)
        for port in range(1000, 1100):  # one attacker IP, many ports
            endpoint.datagram_received(initial(), ("198.51.100.66", port))
        per_source = endpoint_module.MAX_HALF_OPEN_PER_SOURCE
        assert len(endpoint.links) == per_source
        assert endpoint.stats["evicted"] == 100 - per_source
        assert all(link.is_closed for link in accepted[:-per_source])  # the oldest went first
        # A real peer elsewhere still gets in, and once authenticated it is not half-open any more.
        endpoint.datagram_received(initial(), ("203.0.113.5", 4433))
        newcomer = accepted[-1]
        assert newcomer.addr == ("203.0.113.5", 4433) and not newcomer.is_closed
        endpoint.established(newcomer)
        endpoint.close()

    asyncio.run(main())


def test_the_total_of_half_open_connections_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(endpoint_module, "MAX_HALF_OPEN", 20)

    async def main() -> None:
        accepted: list[Link] = []
        endpoint = QuicEndpoint(SERVER, on_incoming=accepted.append)
        endpoint.connection_made(Sink())  # type: ignore[arg-type]
        without_retry(endpoint)
        endpoint.datagram_received(initial(), ("192.0.2.1", 1))
        endpoint.established(accepted[0])  # an authenticated peer is never evicted
        for index in range(50):
            endpoint.datagram_received(initial(), (f"198.51.100.{index + 1}", 9))
        assert not accepted[0].is_closed
        assert len(endpoint.links) == 21 and not accepted[-1].is_closed
        endpoint.close()

    asyncio.run(main())
