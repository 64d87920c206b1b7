"""Hardening of the control endpoint's HTTP server against local abuse.

- Host check on every route (``/probe`` too): only ``127.0.0.1:<port>``, ``localhost:<port>`` and
  ``[::1]:<port>`` are answered, so a web page reached through DNS rebinding cannot read anything.
- A cap on open connections (``MAX_CONNECTIONS``): one more gets ``503`` and is closed at once, so
  half-open connections cannot use up the daemon's file descriptors.
- A header timeout: a connection must deliver a whole request head within ``HEADER_TIMEOUT`` seconds
  of opening (and of its previous response); otherwise it is closed. A request being answered (a long
  ``/load``) is never cut.
- JSON numbers: ``NaN`` and ``Infinity`` are refused when the body is parsed; ``number_in_range``
  checks a value is finite and within bounds.

``install(app)`` adds the middleware; ``GuardedSite`` replaces ``web.TCPSite`` to count connections
and time out unfinished request heads.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import UsageError

MAX_CONNECTIONS = 256
HEADER_TIMEOUT = 10.0
# An idle keep-alive connection is closed after this long without a new request.
IDLE_TIMEOUT = 30.0

_BUSY_BODY = b'{"error": {"code": "busy", "message": "too many connections to the control endpoint"}}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def host_allowed(host: str | None, port: int) -> bool:
    """True for the Host values a local client sends: 127.0.0.1, localhost or [::1] with our port."""
    if not host:
        return False
    return host.lower() in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number here")


def loads_strict(text: str | bytes) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity (Python accepts them by default)."""
    return json.loads(text, parse_constant=_no_constants)


async def json_object(request: Any) -> dict[str, Any]:
    """A request's body as a JSON object (NaN and Infinity refused); UsageError (a 400) otherwise."""
    try:
        data = await request.json(loads=loads_strict)
    except (ValueError, UnicodeDecodeError):
        raise UsageError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object")
    return data


def number_in_range(value: object, key: str, low: float, high: float) -> float:
    """A finite JSON number within [low, high]; UsageError (a 400) otherwise."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UsageError(f"{key} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{key} must be a finite number")
    if not low <= value <= high:
        raise UsageError(f"{key} must be between {low:g} and {high:g}")
    return float(value)


class ConnectionGuard:
    """Open connections and their header timers (one per endpoint)."""

    def __init__(
        self, max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self._open: dict[asyncio.BaseTransport, _ConnState] = {}
        self.refused = 0
        self.timed_out = 0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if len(self._open) >= self.max_connections:
            self.refused += 1
            return False
        state = _ConnState()
        self._open[transport] = state
        self._arm(transport, state, self.header_timeout)
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        state = self._open.pop(transport, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        state = self._open.get(transport) if transport is not None else None
        if state is None:
            return
        state.active += 1
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        state = self._open.get(transport) if transport is not None else None
        if state is None:
            return
        state.active -= 1
        if state.active == 0:
            self._arm(transport, state, self.idle_timeout)  # type: ignore[arg-type]

    def _arm(self, transport: asyncio.BaseTransport, state: _ConnState, delay: float) -> None:
        if state.timer is not None:
            state.timer.cancel()
        state.timer = asyncio.get_running_loop().call_later(delay, self._expire, transport)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        state = self._open.get(transport)
        if state is None or state.active:
            return
        state.timer = None
        self.timed_out += 1
        transport.close()


class _ConnState:
    __slots__ = ("active", "timer")

    def __init__(self) -> None:
        self.active = 0
        self.timer: asyncio.TimerHandle | None = None


GUARD_KEY = web.AppKey("kachery_p2p_connection_guard", ConnectionGuard)


class _GuardedProtocol(asyncio.Protocol):
    """Wraps aiohttp's request handler: admission, then everything passed through."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.BaseTransport | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.guard.admit(transport):
            self.refused = True
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(_BUSY)
            transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.guard.release(self.transport)
        if not self.refused:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    """web.TCPSite with the connection cap and header timeouts of the app's ConnectionGuard."""

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        app = getattr(self._runner, "app", None)
        guard = app.get(GUARD_KEY) if app is not None else None
        if guard is None:
            guard = ConnectionGuard()

        def factory() -> asyncio.Protocol:
            return _GuardedProtocol(server(), guard)

        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address,
            ssl=self._ssl_context,
        )


def install(app: web.Application) -> ConnectionGuard:
    """Add the Host check and connection bookkeeping to ``app`` (before any other middleware)."""
    guard = ConnectionGuard()
    app[GUARD_KEY] = guard

    @web.middleware
    async def host_guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else -1
        # Over TLS (--api-host, pinned self-signed certificate) a browser cannot be rebound to us.
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        if not tls and not host_allowed(request.headers.get("Host"), port):
            return web.json_response(
                {"error": {"code": "forbidden_host", "message": "the control endpoint answers local Host names only"}},
                status=403,
            )
        guard.request_started(transport)
        try:
            return await handler(request)
        finally:
            guard.request_finished(transport)

    app.middlewares.insert(0, host_guard)
    return guard
