"""Issue 10 #4, memory after close: when a stalled reader's connection ends, the server drops the streams'
send buffers and collects/trims at once; the unused-session check does not keep the closed session (and
its buffers) alive for its 30 s grace. Found by ``python -m bench stalled-readers``: RSS stayed ~90 MB
above its start after the sessions closed, and grew by that much with every round."""

from __future__ import annotations

import asyncio
import random
import types
from pathlib import Path

import pytest
from test_serve_stall_sim import OneWayNet
from test_session_sim import make_nodes, run

from kachery_p2p.daemon import link as link_module
from kachery_p2p.daemon.network import PeerNetwork


def test_a_closed_stalled_connection_frees_its_send_buffers_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected: list[bool] = []
    monkeypatch.setattr(link_module, "collect_and_trim", lambda: collected.append(True), raising=False)
    net = OneWayNet(random.Random(7))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    data = random.Random(7).randbytes(16 << 20)
    sha1 = a.store.store_bytes(data).sha1
    buffered_before: list[int] = []

    async def scenario() -> None:
        try:
            session = await b.dial(a)
            requests = [
                asyncio.ensure_future(session.request({"op": "get", "sha1": sha1, "start": 0, "end": len(data)},
                                                      sink=lambda block: None, timeout=30))
                for _ in range(16)
            ]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            server_link = None
            while loop.time() < deadline:
                server_link = next(iter(a.endpoint.links), None)
                if server_link is not None and a.server.budget.used >= 8 << 20:
                    break
                await asyncio.sleep(0.005)
            assert server_link is not None
            net.silenced = a.addr  # b receives nothing from now on: a's streams stall
            await asyncio.sleep(0.3)
            buffered_before.append(sum(len(s.sender._buffer) for s in server_link.conn._streams.values()))
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            session.close("done")
            while not server_link.is_closed and loop.time() < deadline:
                await asyncio.sleep(0.005)
            assert server_link.is_closed
            assert server_link.conn._streams == {}
            while not collected and loop.time() < deadline:
                await asyncio.sleep(0.05)
        finally:
            a.close()
            b.close()

    run(scenario)
    assert buffered_before[0] >= 8 << 20  # the stall did leave MBs in the send buffers
    assert collected == [True]


def test_the_unused_session_check_lets_go_of_a_closed_session_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KACHERY_P2P_UNUSED_SESSION_SEC", "30")

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()
        session = types.SimpleNamespace(link=types.SimpleNamespace(closed=closed, is_closed=False))
        task = asyncio.ensure_future(PeerNetwork._close_if_unused(types.SimpleNamespace(), session))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        started = loop.time()
        session.link.is_closed = True
        closed.set_result(None)
        await asyncio.wait_for(task, 5)  # before: slept the whole 30 s grace, holding the session
        return loop.time() - started

    assert run(scenario) < 1.0
