"""A reply that arrives after its request timed out is dropped: it is never taken for a request from the
peer. (Found by the relay-load bench: under load, late lookup replies reached the node's request
handler, which failed to answer on its own finished stream, "Task exception was never retrieved".)"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from test_session_sim import FakeNet, make_nodes, run

from kachery_p2p.daemon.session import PeerSession


def test_a_late_reply_is_not_served_as_a_request(tmp_path: Path) -> None:
    net = FakeNet(random.Random(3))
    a, b = make_nodes(tmp_path, net, ("a", ["lab"]), ("b", ["lab"]))
    released = asyncio.Event()

    async def slow(session: PeerSession, request: Any) -> tuple[dict[str, Any], None]:
        await released.wait()
        return {"ok": True, "found": False}, None

    a.server.handle = slow  # type: ignore[method-assign]
    served_on_b: list[int] = []

    async def scenario() -> None:
        try:
            session = await b.dial(a)
            seen = session.link.on_new_stream

            def spy(stream_id: int) -> Any:
                served_on_b.append(stream_id)
                return seen(stream_id)

            session.link.on_new_stream = spy
            try:
                await session.request({"op": "has", "sha1": "0" * 40}, timeout=0.2)
            except asyncio.TimeoutError:
                pass
            else:
                raise AssertionError("the request was meant to time out")
            released.set()  # a answers now, on a stream b gave up on
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while loop.time() < deadline and any(served._tasks for served in a.accepted):
                await asyncio.sleep(0.01)
            # The late reply left a before this request's reply, over the same in-order fake link.
            reply, _ = await session.request({"op": "has", "sha1": "1" * 40}, timeout=5)  # the session still works
            assert reply.get("ok") is True
        finally:
            a.close()
            b.close()

    run(scenario)
    assert served_on_b == []
