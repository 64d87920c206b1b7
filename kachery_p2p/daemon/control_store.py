"""Control routes for what the node holds and moves: the store listing, disk use, removal, and the
transfers in progress with cancel. Registered by ``control_ui.add_ui_routes``; the bearer-token guard of
``control.make_app`` covers them."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..errors import UsageError
from ..ids import FileUri
from ..store import ContentStore
from ..store.listing import list_store, remove_file, store_usage
from . import control_guard
from .activity import ActivityPump


def store_of(service: object) -> ContentStore:
    store = getattr(service, "store", None)
    if not isinstance(store, ContentStore):
        raise UsageError("this node has no content store")
    return store


def activity_of(service: object) -> ActivityPump | None:
    """The node's transfer registry (None when no peer network runs)."""
    transfers = getattr(getattr(service, "remote", None), "transfers", None)
    activity = getattr(transfers, "activity", None)
    return activity if isinstance(activity, ActivityPump) else None


def transfers_snapshot(service: object) -> dict[str, Any]:
    activity = activity_of(service)
    if activity is None:
        return {"downloads": [], "uploads": [], "recent": []}
    return activity.snapshot()


def cancel_transfer(service: object, text: Any) -> bool:
    if not isinstance(text, str):
        raise UsageError("missing uri")
    activity = activity_of(service)
    return activity is not None and activity.cancel(FileUri.parse(text).sha1)


async def _body(request: web.Request) -> dict[str, Any]:
    return await control_guard.json_object(request)


def add_store_routes(app: web.Application, service: object) -> None:
    async def files(request: web.Request) -> web.Response:
        entries = await asyncio.to_thread(list_store, store_of(service))
        return web.json_response({"files": [e.to_json() for e in entries]})

    async def usage(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(store_usage, store_of(service)))

    async def remove(request: web.Request) -> web.Response:
        uris = (await _body(request)).get("uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise UsageError("remove needs a non-empty list of URIs")
        parsed = [FileUri.parse(u) for u in uris]  # all checked before anything is removed
        store = store_of(service)
        removed, missing = [], []
        for text, uri in zip(uris, parsed, strict=True):
            what = await asyncio.to_thread(remove_file, store, uri.sha1)
            if what:
                removed.append({"uri": text, "sha1": uri.sha1, "removed": what})
            else:
                missing.append(text)
        return web.json_response({"removed": removed, "notFound": missing})

    async def transfers(request: web.Request) -> web.Response:
        return web.json_response(transfers_snapshot(service))

    async def cancel(request: web.Request) -> web.Response:
        return web.json_response({"cancelled": cancel_transfer(service, (await _body(request)).get("uri"))})

    app.router.add_get("/store/files", files)
    app.router.add_get("/store/usage", usage)
    app.router.add_post("/store/remove", remove)
    app.router.add_get("/transfers", transfers)
    app.router.add_post("/transfers/cancel", cancel)
