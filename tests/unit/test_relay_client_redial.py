"""A node whose relay stops answering (it moved to another address, or a NAT forgot it) drops that relay
session as soon as a request times out and a QUIC PING goes unanswered, so that the relay is dialled again
at once. Before, the session stayed until the QUIC idle timeout (~40 s), and peers meanwhile reached a
session the node had already lost (the netns move test failed 1 run in 4 under load)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kachery_p2p.daemon import rendezvous
from kachery_p2p.daemon.rendezvous import RelayClient
from kachery_p2p.quic.identity import NodeIdentity


class Path:
    addr = ("192.0.2.1", 3478)

    def describe(self) -> str:
        return "192.0.2.1:3478"


class Link:
    def __init__(self, answers_pings: bool) -> None:
        self.answers_pings = answers_pings
        self.path = Path()
        self.ended: list[str] = []
        self.pings = 0

    @property
    def is_closed(self) -> bool:
        return bool(self.ended)

    async def ping(self) -> None:
        self.pings += 1
        if not self.answers_pings:
            await asyncio.Event().wait()

    def close(self, reason: str = "") -> None:
        self.ended.append(f"close: {reason}")

    def abort(self, reason: str) -> None:
        self.ended.append(f"abort: {reason}")


class SilentRelaySession:
    """A relay session whose every request times out."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.requests = 0

    async def request(self, body: dict[str, Any], timeout: float) -> Any:
        self.requests += 1
        raise asyncio.TimeoutError


async def no_stun(addr: Any) -> None:
    return None


def client_for(link: Link) -> tuple[RelayClient, SilentRelaySession]:
    session = SilentRelaySession(link)
    client = RelayClient(
        session,  # type: ignore[arg-type]
        NodeIdentity.generate(), "a", lambda: ["ab" * 32], lambda: [], no_stun, lambda client, node_id: None,
    )
    return client, session


def test_a_relay_that_answers_neither_requests_nor_pings_is_dropped_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rendezvous, "PING_TIMEOUT", 0.05)
    link = Link(answers_pings=False)
    client, session = client_for(link)

    async def scenario() -> None:
        await asyncio.wait_for(client.run(), 5.0)  # run() ends: the keep-dialing loop dials the relay again

    asyncio.run(scenario())
    assert session.requests == 1 and link.pings == 1
    assert link.ended == ["close: relay not answering", "abort: relay not answering"]


def test_a_slow_relay_whose_path_still_answers_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rendezvous, "PING_TIMEOUT", 0.05)
    monkeypatch.setattr(rendezvous, "LOOKUP_INTERVAL", 0.05)
    link = Link(answers_pings=True)
    client, session = client_for(link)

    async def scenario() -> None:
        task = asyncio.ensure_future(client.run())
        while session.requests < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 5.0))
    assert link.ended == [] and link.pings >= 2  # a busy relay: its QUIC stack still acknowledges
