"""Long answers of the control endpoint: JSON lines (load, find) and framed bytes (read).

Both keep the client informed while nothing else happens: a load's follower sends progress at least
every ``running.HEARTBEAT_INTERVAL`` seconds, and a read sends a heartbeat frame when no data went out
for that long (while it searches for providers or waits for a chunk to be verified). A client that
hears nothing for ``CLIENT_SILENCE_TIMEOUT`` seconds (client/http.py) knows the daemon is stuck.

A client that goes away (Ctrl-C, ``| head``) is not an error: what it was waiting for stops quietly
(the download itself only when no other client waits for it) and at most one INFO line is logged.

Framed bytes (``Content-Type: application/x-kachery-frames``): frames of 1 type byte, a 4-byte
big-endian length and the payload. ``S`` {"size": n} first, then ``D`` data, ``H`` heartbeat (empty),
and ``Z`` (empty) at the end, or ``E`` {"code", "message"} instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from ..error_codes import code_for
from ..errors import KacheryP2PError
from .running import HEARTBEAT_INTERVAL

log = logging.getLogger("kachery_p2p.control")

FRAMED = "application/x-kachery-frames"
T = TypeVar("T")
Emit = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client closed its connection."""


def error_body(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, KacheryP2PError):
        return {"code": code_for(exc)[1], "message": str(exc)}
    return {"code": "error", "message": f"internal error: {exc}"}


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError as exc:  # aiohttp: "Cannot write to closing transport"
        raise ClientGone(str(exc)) from None


async def json_lines(request: web.Request, what: str, produce: Callable[[Emit], Awaitable[None]]) -> web.StreamResponse:
    """A JSON-lines response; an error after the first line becomes a final ``{"type": "error"}`` line."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def emit(message: dict[str, Any]) -> None:
        await _write(response, json.dumps(message).encode() + b"\n")

    try:
        try:
            await produce(emit)
        except ClientGone:
            raise
        except Exception as exc:
            if not isinstance(exc, KacheryP2PError):
                log.exception("%s failed", what)
            await emit({"type": "error", **error_body(exc)})
        await response.write_eof()
    except ClientGone:
        log.debug("%s: the client went away", what)
    return response


async def with_heartbeats(work: Awaitable[T], beat: Callable[[], Awaitable[None]]) -> T:
    """Await ``work``, calling ``beat`` each HEARTBEAT_INTERVAL seconds until it is done."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_INTERVAL)
            if done:
                return task.result()
            await beat()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(payload)) + payload


async def framed_bytes(
    request: web.Request, what: str, start: Callable[[], Awaitable[tuple[int, AsyncIterator[bytes]]]]
) -> web.StreamResponse:
    """Framed bytes of ``start()``'s stream, with heartbeats while the daemon waits."""
    response = web.StreamResponse(headers={"Content-Type": FRAMED})
    await response.prepare(request)

    async def beat() -> None:
        await _write(response, frame(b"H"))

    blocks: AsyncIterator[bytes] | None = None
    try:
        try:
            size, stream = await with_heartbeats(start(), beat)
            blocks = stream
            await _write(response, frame(b"S", json.dumps({"size": size}).encode()))
            iterator = stream.__aiter__()
            while True:
                try:
                    block = await with_heartbeats(iterator.__anext__(), beat)
                except StopAsyncIteration:
                    break
                await _write(response, frame(b"D", block))
        except ClientGone:
            raise
        except Exception as exc:
            if not isinstance(exc, KacheryP2PError):
                log.exception("%s failed", what)
            await _write(response, frame(b"E", json.dumps(error_body(exc)).encode()))
        else:
            await _write(response, frame(b"Z"))
        await response.write_eof()
    except ClientGone:
        log.debug("%s: the client went away", what)
    finally:
        if blocks is not None:
            await blocks.aclose()  # type: ignore[attr-defined]
    return response
