"""Serving linked files to peers: every chunk is re-hashed against the manifest before it is sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

from ..errors import KacheryP2PError, RemoteProtocolError
from ..store.links import LinkedChunks

log = logging.getLogger("kachery_p2p.serve")


async def verified_linked_range(chunks: LinkedChunks, sha1: str, start: int, end: int) -> AsyncIterator[bytes]:
    """The body for a range of a linked file; RemoteProtocolError("not_found") if the first chunk fails.

    A later chunk that fails stops the stream short (the peer sees a truncated reply, never wrong bytes).
    """
    blocks = chunks.read_range(sha1, start, end)
    try:
        first = await asyncio.to_thread(next, blocks, None)
    except KacheryP2PError as exc:  # the reason (with our local path) stays in our log
        log.warning("not serving linked %s: %s", sha1, exc)
        raise RemoteProtocolError(f"not serving {sha1}: our linked copy changed", code="not_found") from None
    return _rest(first, blocks)


async def _rest(first: bytes | None, blocks: Iterator[bytes]) -> AsyncIterator[bytes]:
    block = first
    while block is not None:
        yield block
        block = await asyncio.to_thread(next, blocks, None)
