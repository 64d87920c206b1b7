"""Cancelling a reply that is being sent ends it, even when the cancel lands just as the peer's ACK
frees the send buffer (CI failure: the scripted peers did not stop. asyncio.wait_for in Python 3.11
returns normally when the inner wait finished in the same loop turn as the cancel, so the serving task
went on sending to a daemon that had been killed and shutdown waited for the 30 s stall timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kachery_p2p.daemon.serve_budget import send_body


class ScriptedLink:
    """A link whose drain waits until the test frees it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.freed: asyncio.Future[None] | None = None

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.sent.append(data)

    async def drain(self, stream_id: int) -> None:
        self.freed = asyncio.get_running_loop().create_future()
        await self.freed

    def reset(self, stream_id: int, code: int = 1) -> None:
        pass


async def blocks(count: int) -> AsyncIterator[bytes]:
    for i in range(count):
        yield bytes([i]) * 10


def test_a_cancel_arriving_with_the_ack_stops_the_reply() -> None:
    async def scenario() -> list[bytes]:
        link = ScriptedLink()
        task = asyncio.ensure_future(send_body(link, 0, blocks(100), stall_timeout=30.0))  # type: ignore[arg-type]
        for _ in range(10):
            await asyncio.sleep(0)
        assert link.freed is not None and len(link.sent) == 1
        link.freed.set_result(None)  # the ACK: drain returns on the next loop turn
        await asyncio.sleep(0)
        task.cancel()  # the shutdown, in the same turn as drain's completion is delivered
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)
        return link.sent

    sent = asyncio.run(scenario())
    assert len(sent) <= 2, f"{len(sent)} blocks sent after the reply was cancelled"
