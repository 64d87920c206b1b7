"""One piece of a download over one QUIC stream, into the partial file (see download.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..errors import RemoteProtocolError
from ..quic import messages
from ..store import PartialFile
from ..transfer.plan import DownloadPlan, Piece
from .slow import Provider, request_while_alive

PIECE_TIMEOUT = 60.0  # a piece stream that delivers no byte for this long is given up (slow is fine)
WRITE_BLOCK = 1 << 20


async def fetch_piece(
    sha1: str, provider: Provider, piece: Piece, partial: PartialFile, plan: DownloadPlan, buffered: bool,
    count: Callable[[int], None],
) -> bool:
    """Fetch one piece into the partial file. False when another copy got there first.

    Packets carry ~1.3 kB each: they are gathered and written in large blocks. A second copy
    requested in the endgame is held in memory; if it arrives whole first it takes the piece over
    and rewrites all of it, and the other copy writes nothing more. A copy that arrives second
    writes nothing, so it cannot touch bytes already verified.
    """
    buffer = bytearray()
    written = piece.start
    node_id = provider.node_id
    # Set when another copy got the piece first: this request stops (its stream is reset).
    taken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def flush() -> None:
        nonlocal written
        if buffer and plan.claim_write(piece, node_id):
            partial.write_at(written, buffer)
        written += len(buffer)
        buffer.clear()

    def sink(data: bytes) -> None:
        count(len(data))
        if taken.done():
            return
        if not plan.is_open(piece, node_id):
            taken.set_result(None)
            return
        if written + len(buffer) + len(data) > piece.end:
            raise RemoteProtocolError("provider sent more bytes than asked", code="bad_request")
        buffer.extend(data)
        if not buffered and len(buffer) >= WRITE_BLOCK:
            flush()

    session = provider.session
    header = {"op": "get", "sha1": sha1, "start": piece.start, "end": piece.end}
    request = asyncio.ensure_future(request_while_alive(session, header, sink, PIECE_TIMEOUT))
    try:
        waiters: set[asyncio.Future[Any]] = {request, taken}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not request.done():
            request.cancel()  # resets the stream: the provider stops sending
    if taken.done() and not request.done():
        return False
    reply = request.result()
    messages.check_ok(reply)
    if written + len(buffer) != piece.end:
        raise RemoteProtocolError(f"provider sent {written + len(buffer) - piece.start} of {piece.size} bytes")
    # From here to piece_received (in the caller) nothing awaits: no other copy can write between.
    if buffered:
        if not plan.claim_write(piece, node_id, take_over=True):
            return False
        partial.write_at(piece.start, buffer)
        return True
    flush()
    return plan.claim_write(piece, node_id)
