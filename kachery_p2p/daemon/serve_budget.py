"""Memory used to serve files to peers, bounded per peer and in total; stalled streams time out.

A stream being served holds at most its send window (the QUIC send buffer up to the high-water mark)
plus one read block. Before a range is served, that much is reserved from the peer's budget and the
total budget; a request over either budget gets a ``busy`` error instead of memory. The reservation
is returned when the stream ends, however it ends: finished, reset, timed out (a peer that stops
reading for ``STALL_TIMEOUT`` seconds has its stream reset) or its session closed.

After a burst, when nothing is being served any more, freed memory is handed back to the system
(``malloc_trim`` on glibc), so RSS falls back instead of staying at its peak.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from kachery_p2p.daemon.deadline import within

log = logging.getLogger("kachery_p2p.serve")

SERVE_BLOCK = 256 * 1024
# The send window of one stream: what the endpoint buffers before the writer waits (SEND_HIGH_WATER),
# plus the block written just before that wait, plus the block being read.
STREAM_WINDOW = (1 << 20) + 2 * SERVE_BLOCK
PEER_BUDGET = 24 << 20
TOTAL_BUDGET = 192 << 20
STALL_TIMEOUT = 30.0
TRIM_AFTER = 8 << 20


class ServeBudget:
    """Reservations of serving memory by peer (sans-IO)."""

    def __init__(self, per_peer: int = PEER_BUDGET, total: int = TOTAL_BUDGET) -> None:
        self.per_peer = per_peer
        self.total = total
        self.used = 0
        self.by_peer: dict[str, int] = {}
        self.refused = 0
        self.peak = 0
        self._since_trim = 0

    def try_reserve(self, peer: str, amount: int) -> bool:
        peer_used = self.by_peer.get(peer, 0)
        if peer_used + amount > self.per_peer or self.used + amount > self.total:
            self.refused += 1
            return False
        self.by_peer[peer] = peer_used + amount
        self.used += amount
        self.peak = max(self.peak, self.used)
        self._since_trim = max(self._since_trim, self.used)
        return True

    def release(self, peer: str, amount: int) -> bool:
        """Give a reservation back; True when memory should now be returned to the system."""
        left = self.by_peer.get(peer, 0) - amount
        if left > 0:
            self.by_peer[peer] = left
        else:
            self.by_peer.pop(peer, None)
        self.used = max(0, self.used - amount)
        if self.used == 0 and self._since_trim >= TRIM_AFTER:
            self._since_trim = 0
            return True
        return False


def stream_reservation(length: int) -> int:
    return max(1, min(length, STREAM_WINDOW))


async def budgeted(
    blocks: AsyncIterator[bytes], budget: ServeBudget, peer: str, amount: int
) -> AsyncIterator[bytes]:
    """``blocks`` with a reservation already made, released when the stream ends in any way."""
    try:
        async for block in blocks:
            yield block
    finally:
        await _aclose(blocks)
        if budget.release(peer, amount):
            asyncio.get_running_loop().run_in_executor(None, trim_memory)


class _Link(Protocol):
    def send(self, stream_id: int, data: bytes, end: bool = False) -> None: ...
    async def drain(self, stream_id: int) -> None: ...
    def reset(self, stream_id: int, code: int = 1) -> None: ...


async def send_body(
    link: _Link, stream_id: int, body: AsyncIterator[bytes], stall_timeout: float | None = None
) -> None:
    """Send a reply body; a peer that reads nothing for ``stall_timeout`` (default ``STALL_TIMEOUT``)
    has the stream reset. The body is closed at the end, whatever happens (its reservation is returned)."""
    stall_timeout = STALL_TIMEOUT if stall_timeout is None else stall_timeout
    try:
        async for block in body:
            link.send(stream_id, block)
            try:
                await within(link.drain(stream_id), stall_timeout)
            except asyncio.TimeoutError:
                log.info("stream %d stalled for %g s; reset", stream_id, stall_timeout)
                link.reset(stream_id)
                return
        link.send(stream_id, b"", end=True)
    finally:
        await _aclose(body)


async def _aclose(iterator: AsyncIterator[bytes]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _load_trim() -> object | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


_MALLOC_TRIM = _load_trim()


def collect_and_trim() -> None:
    """After a connection holding a lot of send buffers ended: collect the reference cycles that still
    keep it (a link's closed future holds a traceback whose frames refer to the link), then return the
    freed heap to the system (the trim in a worker thread). Call on the event loop."""
    gc.collect()
    asyncio.get_running_loop().run_in_executor(None, trim_memory)


def trim_memory() -> None:
    """Return freed heap memory to the system (glibc); a no-op elsewhere."""
    if callable(_MALLOC_TRIM):
        _MALLOC_TRIM(0)
