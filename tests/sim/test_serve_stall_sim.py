"""Issue 10 #4 over real QUIC (in-memory network): a peer that asks for many ranges and then reads
nothing holds at most its serving budget, its streams are reset after the stall timeout, and the
budget returns to zero."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from test_session_sim import FakeNet, make_nodes, run

from kachery_p2p.daemon import serve_budget
from kachery_p2p.daemon.endpoint import Address


class OneWayNet(FakeNet):
    """Drops every datagram from ``silenced`` once set (the peer's ACKs still go the other way)."""

    silenced: Address | None = None

    def route(self, data: bytes, src: Address, dst: Address) -> None:
        if src == self.silenced:
            self.stats["dropped"] += 1
            return
        super().route(data, src, dst)


def test_a_peer_that_stops_reading_holds_only_its_budget_and_gets_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_budget, "STALL_TIMEOUT", 0.5)
    net = OneWayNet(random.Random(5))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    data = random.Random(5).randbytes(32 << 20)
    sha1 = a.store.store_bytes(data).sha1
    budget = a.server.budget
    peak: list[int] = []
    after_stall: list[int] = []

    async def scenario() -> None:
        try:
            session = await b.dial(a)
            requests = [
                asyncio.ensure_future(session.request({"op": "get", "sha1": sha1, "start": 0, "end": len(data)},
                                                      sink=lambda block: None, timeout=30))
                for _ in range(64)
            ]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while budget.refused + len(budget.by_peer) == 0 and loop.time() < deadline:
                await asyncio.sleep(0.005)
            net.silenced = a.addr  # from now on B receives nothing: every stream A serves stalls
            while loop.time() < deadline and budget.refused + budget.used // serve_budget.STREAM_WINDOW < 64:
                peak.append(budget.used)
                await asyncio.sleep(0.005)
            peak.append(budget.used)
            while budget.used and loop.time() < deadline + 10:
                await asyncio.sleep(0.05)
            after_stall.append(budget.used)  # the session is still open: only the stall timeout resets
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
        finally:
            a.close()
            b.close()

    run(scenario)
    assert max(peak) <= serve_budget.PEER_BUDGET
    assert budget.refused > 0  # the rest were told busy instead of being given memory
    assert after_stall == [0]  # stalled streams reset while the session lives, memory returned
    assert budget.used == 0 and budget.by_peer == {}
