"""Providers of a download, and their requests: given up only when no byte arrived for a while, however
long they take (slow is not dead)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .session import PeerSession


@dataclass
class HeadComing:
    """A larger file's first ``size`` bytes, on their way as the body of the answer to "has"."""

    size: int
    body: asyncio.Future[bytes]
    stop: Callable[[], None]  # resets the answer's stream: the provider stops sending them


@dataclass
class Provider:
    """A peer that has the file. Its session is looked up at each use, so a provider reached through
    a relay moves to the direct path as soon as one opens."""

    first_session: PeerSession
    size: int
    resolve: Callable[[str], PeerSession | None] | None = None
    # The file's first bytes sent with the answer to "has" (unverified until the caller checks them): all of
    # a small file, here once the answer is; or a larger file's first piece, still on its way.
    head: bytes | None = None
    head_coming: HeadComing | None = None

    @property
    def node_id(self) -> str:
        assert self.first_session.node_id is not None
        return self.first_session.node_id

    @property
    def session(self) -> PeerSession:
        best = self.resolve(self.node_id) if self.resolve is not None else None
        return best or self.first_session

    @property
    def alive(self) -> bool:
        return not self.session.link.is_closed


async def request_while_alive(
    session: PeerSession, header: dict[str, Any], sink: Callable[[bytes], None], idle_timeout: float
) -> dict[str, Any]:
    """``session.request`` with ``sink``; asyncio.TimeoutError only after ``idle_timeout`` s without a byte."""
    last = [time.monotonic()]

    def counting(data: bytes) -> None:
        last[0] = time.monotonic()
        sink(data)

    task = asyncio.ensure_future(session.request(header, sink=counting))
    try:
        while True:
            idle = time.monotonic() - last[0]
            done, _ = await asyncio.wait({task}, timeout=max(0.05, idle_timeout - idle))
            if done:
                return task.result()[0]
            if time.monotonic() - last[0] >= idle_timeout:
                raise asyncio.TimeoutError()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        elif not task.cancelled():
            task.exception()  # read: a failure as the caller stopped waiting is not logged at collection
