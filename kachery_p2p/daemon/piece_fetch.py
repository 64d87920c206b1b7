"""One piece of a download over one QUIC stream, into the partial file (see download.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import RemoteProtocolError
from ..quic import messages
from ..quic.settings import smoothed_rtt
from ..store import PartialFile
from ..transfer.plan import DownloadPlan, Piece
from .deadline import within
from .link import LinkClosed
from .session import PeerSession
from .slow import Provider, request_while_alive

log = logging.getLogger("kachery_p2p.download")

PIECE_TIMEOUT = 60.0  # a piece stream that delivers no byte for this long is given up (slow is fine)
WRITE_BLOCK = 1 << 20
# Progress reported to the plan (for stealing) and the piece's state checked once per this many bytes.
CHECK_BYTES = 64 * 1024
# The next piece is asked for when, at the rate of its last round trips, the current one should end within
# this many smoothed round trips (plus LEAD_EXTRA for the provider to start sending): a request's first bytes
# come 1-2 smoothed RTTs after it is sent on a loaded path, so they follow the current piece's last.
LEAD_RTTS = 2.0
LEAD_EXTRA = 0.01
UNKNOWN_RTT = 0.05


def lead_time(session: PeerSession) -> float:
    """How long before a piece's end the next one should be asked for, on ``session``'s path."""
    conn = getattr(session.link, "conn", None)
    rtt = smoothed_rtt(conn) if conn is not None else None
    return LEAD_RTTS * (rtt or UNKNOWN_RTT) + LEAD_EXTRA


async def fetch_piece(
    sha1: str, provider: Provider, piece: Piece, partial: PartialFile, plan: DownloadPlan, buffered: bool,
    count: Callable[[int], None],
    early: Callable[[], None] | None = None,
    lead: float = 0.0,
) -> bool:
    """Fetch one piece into the partial file. False when another copy got there first.

    Packets carry ~1.3 kB each: they are gathered and written in large blocks. A second copy
    requested in the endgame is held in memory; if it arrives whole first it takes the piece over
    and rewrites all of it, and the other copy writes nothing more. A copy that arrives second
    writes nothing, so it cannot touch bytes already verified. When another provider took the tail
    of the piece (``plan.steal``), the fetch ends where the tail begins and its stream is reset.
    ``early()`` is called once, when at the rate this piece arrives its end is less than ``lead``
    seconds away (the caller asks for its next piece then).
    """
    buffer = bytearray()
    written = piece.start
    node_id = provider.node_id
    # "taken": another copy got the piece first; "complete": every byte up to the piece's current
    # end arrived (its tail was stolen). Either way this request stops (its stream is reset).
    stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def flush() -> None:
        nonlocal written
        if buffer and plan.claim_write(piece, node_id):
            partial.write_at(written, buffer)
        written += len(buffer)
        buffer.clear()

    end = plan.end_of(piece)  # refreshed at each check: a steal only moves it down, never below `checked`
    checked = piece.start  # bytes up to here were reported to the plan (plan.arrived)
    marks: deque[tuple[float, int]] = deque()  # (time, bytes arrived) at checks: the rate of the last `lead` s

    def near_end(have: int) -> None:
        nonlocal early
        now = time.monotonic()
        marks.append((now, have))
        while len(marks) > 2 and marks[1][0] <= now - lead:
            marks.popleft()
        since, had = marks[0]
        if early is not None and now > since and (end - have) * (now - since) <= lead * (have - had):
            early()
            early = None

    def sink(data: bytes) -> None:
        nonlocal end, checked
        count(len(data))
        if stop.done():
            return
        have = written + len(buffer) + len(data)
        if have > piece.end:
            raise RemoteProtocolError("provider sent more bytes than asked", code="bad_request")
        # The plan is asked once per CHECK_BYTES (and at the known end), not for each ~1.3 kB packet.
        if have - checked < CHECK_BYTES and have < end:
            buffer.extend(data)
            return
        if not plan.is_open(piece, node_id):
            stop.set_result("taken")
            return
        end = plan.end_of(piece)
        if early is not None:
            near_end(have)
        if have >= end:
            keep = end - written - len(buffer)  # < 0: the split fell inside bytes buffered since the last check
            if keep >= 0:
                buffer.extend(memoryview(data)[:keep])
            else:
                del buffer[keep:]
            plan.arrived(piece, node_id, end - piece.start)  # nothing left to steal
            stop.set_result("complete")
            return
        buffer.extend(data)
        checked = have
        plan.arrived(piece, node_id, have - piece.start)
        # Only right after a check: a steal splits at or after the progress reported, so what is
        # written here can never be a stolen tail.
        if not buffered and len(buffer) >= WRITE_BLOCK:
            flush()

    session = provider.session
    header = {"op": "get", "sha1": sha1, "start": piece.start, "end": plan.end_of(piece)}
    request = asyncio.ensure_future(request_while_alive(session, header, sink, PIECE_TIMEOUT))
    # Its error is read below when it matters; when the piece ended otherwise (taken, complete, cancelled)
    # in the same loop turn as the request failed, it is dropped here, not logged by asyncio at collection.
    request.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        waiters: set[asyncio.Future[Any]] = {request, stop}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not request.done():
            request.cancel()  # resets the stream: the provider stops sending
    if (stop.done() and stop.result() == "taken") or not plan.is_open(piece, node_id):
        return False  # another copy got there first (or the chunk was queued again): the plan forgot the piece
    if not stop.done():
        messages.check_ok(request.result())
    end = plan.end_of(piece)
    if end < written + len(buffer) and written <= end:
        del buffer[end - written :]  # its tail was taken while this copy ended: keep only the rest
    if written + len(buffer) != end:
        raise RemoteProtocolError(f"provider sent {written + len(buffer) - piece.start} of {end - piece.start} bytes")
    # From here to piece_received (in the caller) nothing awaits: no other copy can write between.
    if buffered:
        if not plan.claim_write(piece, node_id, take_over=True):
            return False
        partial.write_at(piece.start, buffer)
        return True
    flush()
    return plan.claim_write(piece, node_id)


def start_head_piece(
    plan: DownloadPlan, partial: PartialFile, providers: list[Provider], count: Callable[[int], None],
    received: Callable[[int | None], None],
) -> asyncio.Task[None] | None:
    """The first bytes of a larger file that a provider sends with its answer to "has" (``Provider.head_coming``)
    become the download's first piece, in flight from that provider while the other pieces are asked for: the
    path does not idle for the round trip of the first requests. The task that writes them when they are all
    here; ``received`` gets the index of the chunk they complete (to verify), or None. Verified with their
    chunk like any piece (their provider charged if it fails); if they never come whole, the piece is
    fetched again as any other. Other providers' first bytes are not used: they are stopped."""
    chosen = next((p for p in providers if p.head_coming is not None), None)
    coming = chosen.head_coming if chosen is not None else None
    piece = plan.take_front(coming.size, chosen.node_id, time.monotonic()) if chosen and coming else None
    for provider in providers:
        if provider.head_coming is not None and (provider is not chosen or piece is None):
            _drop_head(provider)  # (no piece: the first chunk is verified already, resumed, or not wanted)
    if chosen is None or piece is None:
        return None
    task = asyncio.ensure_future(_receive_head(plan, partial, chosen, piece, count, received))
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the first bytes of a download could not be written: %s", error, exc_info=error)


def _drop_head(provider: Provider) -> None:
    if provider.head_coming is not None:
        provider.head_coming.stop()
        provider.head_coming = None


async def _receive_head(
    plan: DownloadPlan, partial: PartialFile, provider: Provider, piece: Piece, count: Callable[[int], None],
    received: Callable[[int | None], None],
) -> None:
    coming = provider.head_coming
    assert coming is not None
    try:
        data = await within(asyncio.shield(coming.body), PIECE_TIMEOUT)  # not cancelled: stop() resets the stream
        if len(data) != coming.size:
            raise RemoteProtocolError(f"provider sent {len(data)} of the {coming.size} first bytes it announced")
    except BaseException as exc:
        _drop_head(provider)
        plan.piece_failed(piece, provider.node_id)  # asked for again, as any piece that did not arrive
        received(None)
        if isinstance(exc, (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, OSError)):
            return
        raise
    # Whole, like an endgame copy that arrived whole: it takes the piece over from a copy being written.
    if not plan.claim_write(piece, provider.node_id, take_over=True):
        plan.piece_failed(piece, provider.node_id)  # another copy got there first
        received(None)
        return
    try:
        partial.write_at(piece.start, memoryview(data)[: piece.size])
    except BaseException:
        # (our disk: the piece is fetched again, and a full disk then stops the download as any piece's write)
        plan.piece_failed(piece, provider.node_id)
        received(None)
        raise
    count(piece.size)
    received(plan.piece_received(piece, provider.node_id))
