"""The dashboard under ``/ui`` on the control port, and the routes of the store and transfer commands.

Login is Jupyter-style: ``kachery-p2p-ui`` asks ``POST /ui-login`` (bearer token, like every control
request) for a one-time link ``/ui/login?t=...``; opening it sets an HttpOnly, SameSite=Strict session
cookie and redirects to ``/ui/``, so the secret is gone from the address bar and never in the page.
Every ``/ui`` request needs that cookie; the Host check of ``control_guard`` covers them as it covers
every route, and here a request whose Origin (or Sec-Fetch-Site) says it comes from another site is
refused. The page is plain HTML, CSS and JavaScript from ``ui_static/`` (no CDN, no build step); it is
kept up to date by server-sent events (``/ui/api/events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from kachery_p2p.daemon.deadline import within

from ..errors import KacheryP2PError, UsageError
from . import control_guard
from .control_store import add_store_routes, cancel_transfer, transfers_snapshot
from .dashboard_state import DashboardState

COOKIE = "kp2p_session"
LOGIN_TTL = 120.0
SESSION_TTL = 12 * 3600.0
EVENT_INTERVAL = 1.0
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_dashboard_path(path: str) -> bool:
    """Paths the dashboard's cookie guards (the bearer-token check leaves them to it)."""
    return path == "/ui" or path.startswith("/ui/")


class Sessions:
    """One-time login tokens and the browser sessions they open (in memory: a restart logs out)."""

    def __init__(self) -> None:
        self._logins: dict[str, float] = {}
        self._sessions: dict[str, float] = {}

    def new_login(self, now: float) -> str:
        self._logins = {t: exp for t, exp in self._logins.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self._logins[token] = now + LOGIN_TTL
        return token

    def redeem(self, token: str, now: float) -> str | None:
        """A new session id for a valid login token (which is used up), else None."""
        expires = self._logins.pop(token, None)
        if expires is None or expires < now:
            return None
        session = secrets.token_urlsafe(32)
        self._sessions[session] = now + SESSION_TTL
        return session

    def valid(self, session: str | None, now: float) -> bool:
        if not session:
            return False
        expires = self._sessions.get(session)
        if expires is None or expires < now:
            self._sessions.pop(session, None)
            return False
        self._sessions[session] = now + SESSION_TTL
        return True


def _same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return request.method in ("GET", "HEAD")
    return origin.lower() == f"http://{request.headers.get('Host', '').lower()}"


def _refuse(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=SECURITY_HEADERS)


def make_ui_app(service: object, sessions: Sessions) -> web.Application:
    state = DashboardState(service)
    stopping = asyncio.Event()

    @web.middleware
    async def cookie_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _same_origin(request):
            return _refuse(403, "forbidden_origin", "the dashboard answers its own pages only")
        if request.path != "/ui/login" and not sessions.valid(request.cookies.get(COOKIE), time.monotonic()):
            return _refuse(401, "unauthorized", "log in with the link kachery-p2p-ui prints")
        try:
            response = await handler(request)
        except KacheryP2PError as exc:
            return _refuse(400 if isinstance(exc, UsageError) else 500, "error", str(exc))
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    async def login(request: web.Request) -> web.StreamResponse:
        session = sessions.redeem(request.query.get("t", ""), time.monotonic())
        if session is None:
            return _refuse(403, "bad_login", "this login link is used up or expired: run kachery-p2p-ui again")
        response = web.HTTPSeeOther("/ui/", headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path="/ui", max_age=int(SESSION_TTL))
        return response

    async def static(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        if name not in STATIC:
            raise web.HTTPNotFound()
        body = resources.files("kachery_p2p.daemon").joinpath(f"ui_static/{name}").read_bytes()
        return web.Response(body=body, content_type=STATIC[name], charset="utf-8")

    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response(await state.collect())

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while not stopping.is_set():
                payload = json.dumps(await state.collect(), separators=(",", ":"))
                await response.write(f"event: state\ndata: {payload}\n\n".encode())
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(stopping.wait(), EVENT_INTERVAL)
        except (ConnectionResetError, RuntimeError):
            pass  # the browser went away
        return response

    async def action(request: web.Request) -> web.Response:
        data = await control_guard.json_object(request)
        what = request.match_info["action"]
        if what == "cancel":
            return web.json_response({"cancelled": cancel_transfer(service, data.get("uri"))})
        name = data.get("name")
        if not isinstance(name, str):
            raise UsageError("missing channel name")
        join = getattr(service, f"{what}_channel", None)
        if what not in ("join", "leave") or join is None:
            raise web.HTTPNotFound()
        changed = bool(join(name))
        state.changed()
        return web.json_response({"changed": changed})

    async def on_shutdown(app: web.Application) -> None:
        stopping.set()

    app = web.Application(middlewares=[cookie_guard])
    app.router.add_get("/login", login)
    app.router.add_get("/", static)
    app.router.add_get("/{name}", static)
    app.router.add_get("/api/state", snapshot)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/{action}", action)
    app.on_shutdown.append(on_shutdown)
    return app


def add_ui_routes(app: web.Application, service: object) -> None:
    """Register the store and transfer routes, ``POST /ui-login`` and the ``/ui`` dashboard."""
    add_store_routes(app, service)
    sessions = Sessions()

    async def new_login(request: web.Request) -> web.Response:
        token = sessions.new_login(time.monotonic())
        return web.json_response({"path": f"/ui/login?t={token}", "expiresInSec": LOGIN_TTL})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/ui/")

    app.router.add_post("/ui-login", new_login)
    app.router.add_get("/ui", redirect)
    app.add_subapp("/ui/", make_ui_app(service, sessions))


__all__ = ["add_ui_routes", "is_dashboard_path", "transfers_snapshot"]
