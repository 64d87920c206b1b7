"""The control endpoint: HTTP on 127.0.0.1 for the node's owner only.

Every route but ``GET /probe`` needs ``Authorization: Bearer <token>``; the token lives in a 0600 file
in the config dir. It is never read from the query string and never logged (the access log is off).
Long operations answer with JSON lines (``application/x-ndjson``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ..error_codes import code_for
from ..errors import KacheryP2PError, UsageError
from ..ids import FileUri
from . import control_guard
from .control_api import add_api_routes
from .control_feeds import register_feed_routes
from .control_stream import Emit, framed_bytes, json_lines
from .control_ui import add_ui_routes, is_dashboard_path

log = logging.getLogger("kachery_p2p.control")

MAX_JSON_BODY = 64 * 1024
MAX_TIMEOUT_SEC = 30 * 24 * 3600.0


class NodeService(Protocol):
    """What the control endpoint needs from the node."""

    def probe_info(self) -> dict[str, Any]: ...
    def node_info(self) -> dict[str, Any]: ...
    def channel_names(self) -> list[str]: ...
    def join_channel(self, name: str) -> bool: ...
    def leave_channel(self, name: str) -> bool: ...
    def peers_info(self) -> list[dict[str, Any]]: ...
    async def store_path(self, path: Path, name: str) -> dict[str, Any]: ...
    async def store_upload(self, chunks: AsyncIterator[bytes], name: str) -> dict[str, Any]: ...
    async def load(
        self, uri: FileUri, timeout: float | None, progress: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> Path: ...
    def find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]: ...
    async def open_range(
        self, uri: FileUri, start: int | None, end: int | None, timeout: float | None
    ) -> tuple[int, AsyncIterator[bytes]]: ...
    def request_stop(self) -> None: ...


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def make_app(service: NodeService, token: str) -> web.Application:
    """The aiohttp application; ``token`` is the secret every request but /probe must carry."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != "/probe" and not is_dashboard_path(request.path):  # /ui checks its own cookie
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return error_response(401, "unauthorized", "missing or wrong control token")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except KacheryP2PError as exc:
            status, code = code_for(exc)
            return error_response(status, code, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("control request %s %s failed", request.method, request.path)
            return error_response(500, "error", f"internal error: {exc}")

    app = web.Application(middlewares=[guard], client_max_size=MAX_JSON_BODY)
    control_guard.install(app)  # Host check, connection cap, header timeouts (before the token check)
    routes = _Routes(service)
    app.router.add_get("/probe", routes.probe)
    app.router.add_get("/node-info", routes.node_info)
    app.router.add_get("/channels", routes.channels)
    app.router.add_post("/channels/join", routes.join)
    app.router.add_post("/channels/leave", routes.leave)
    app.router.add_get("/peers", routes.peers)
    app.router.add_post("/store", routes.store)
    app.router.add_post("/upload", routes.upload)
    app.router.add_post("/load", routes.load)
    app.router.add_post("/find", routes.find)
    app.router.add_post("/read", routes.read)
    app.router.add_post("/halt", routes.halt)
    register_feed_routes(app, service)
    add_ui_routes(app, service)  # store listing, transfers, dashboard (control_ui.py)
    add_api_routes(app, service)  # /link and /mutables/* (control_api.py)
    return app


async def _json(request: web.Request) -> dict[str, Any]:
    return await control_guard.json_object(request)


def _opt_number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    return control_guard.number_in_range(value, key, 0, MAX_TIMEOUT_SEC)


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError(f"{key} must be a non-negative integer")
    return value


def _uri(data: dict[str, Any]) -> FileUri:
    value = data.get("uri")
    if not isinstance(value, str):
        raise UsageError("missing uri")
    return FileUri.parse(value)


class _Routes:
    def __init__(self, service: NodeService) -> None:
        self.service = service

    async def probe(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.probe_info())

    async def node_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.node_info())

    async def channels(self, request: web.Request) -> web.Response:
        return web.json_response({"channels": self.service.channel_names()})

    async def join(self, request: web.Request) -> web.Response:
        name = (await _json(request)).get("name")
        if not isinstance(name, str):
            raise UsageError("missing channel name")
        return web.json_response({"changed": self.service.join_channel(name)})

    async def leave(self, request: web.Request) -> web.Response:
        name = (await _json(request)).get("name")
        if not isinstance(name, str):
            raise UsageError("missing channel name")
        return web.json_response({"changed": self.service.leave_channel(name)})

    async def peers(self, request: web.Request) -> web.Response:
        return web.json_response({"peers": self.service.peers_info()})

    async def store(self, request: web.Request) -> web.Response:
        data = await _json(request)
        path, name = data.get("path"), data.get("name")
        if not isinstance(path, str) or not isinstance(name, str):
            raise UsageError("store needs a path and a name")
        return web.json_response(await self.service.store_path(Path(path), name))

    async def upload(self, request: web.Request) -> web.Response:
        try:
            name = bytes.fromhex(request.headers.get("X-Kachery-Name", "")).decode("utf-8")
        except ValueError:
            raise UsageError("bad X-Kachery-Name header") from None
        if request.content_length is None:
            raise UsageError("upload needs a Content-Length")

        async def chunks() -> AsyncIterator[bytes]:
            async for block in request.content.iter_chunked(1 << 20):
                yield block

        return web.json_response(await self.service.store_upload(chunks(), name))

    async def load(self, request: web.Request) -> web.StreamResponse:
        data = await _json(request)
        uri = _uri(data)
        timeout = _opt_number(data, "timeoutSec")

        async def lines(emit: Emit) -> None:
            async def progress(message: dict[str, Any]) -> None:
                await emit({"type": "progress", **message})

            path = await self.service.load(uri, timeout, progress)
            await emit({"type": "done", "path": str(path)})

        return await json_lines(request, f"load {uri}", lines)

    async def find(self, request: web.Request) -> web.StreamResponse:
        data = await _json(request)
        uri = _uri(data)
        timeout = _opt_number(data, "timeoutSec")

        async def lines(emit: Emit) -> None:
            async for provider in self.service.find(uri, 5.0 if timeout is None else timeout):
                await emit({"type": "provider", **provider})

        return await json_lines(request, f"find {uri}", lines)

    async def read(self, request: web.Request) -> web.StreamResponse:
        data = await _json(request)
        uri = _uri(data)
        start, end, timeout = _opt_int(data, "start"), _opt_int(data, "end"), _opt_number(data, "timeoutSec")
        if data.get("framed") is True:
            return await framed_bytes(request, f"read {uri}", lambda: self.service.open_range(uri, start, end, timeout))
        size, blocks = await self.service.open_range(uri, start, end, timeout)
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        )
        try:
            await response.prepare(request)
            async for block in blocks:
                await response.write(block)
            await response.write_eof()
        except (KacheryP2PError, OSError) as exc:
            # The client sees a short body and reports it; nothing else can be said mid-stream.
            log.debug("read of %s stopped: %s", uri, exc)
            if request.transport is not None:
                request.transport.close()
        finally:
            await blocks.aclose()  # type: ignore[attr-defined]
        return response

    async def halt(self, request: web.Request) -> web.StreamResponse:
        # Answer first, then stop: the client must get its reply before the endpoint goes away.
        response = web.json_response({"stopping": True})
        await response.prepare(request)
        await response.write_eof()
        self.service.request_stop()
        return response
