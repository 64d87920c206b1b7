"""Control routes of the original's Python API: linking files in place and mutables.

    POST /link              {"path": abs, "name": str}  -> {"uri", "sha1", "size", "manifestSha1"}
    POST /mutables/get      {"key": json}               -> {"found": bool, "value": json}
    POST /mutables/set      {"key": json, "value": json} -> {}
    POST /mutables/delete   {"key": json}               -> {"deleted": bool}

Registered by ``control.make_app`` (``add_api_routes``); they go through its token check.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import DaemonConfig
from ..errors import UsageError
from ..ids import format_store_uri
from ..store import ContentStore
from ..store.links import link_file
from . import control_guard
from .control_access import group_may_read
from .mutables import Mutables


def add_api_routes(app: web.Application, service: object) -> None:
    """Add the routes when the service is a real node (it has a store and a config dir)."""
    store = getattr(service, "store", None)
    config = getattr(service, "config", None)
    if not isinstance(store, ContentStore) or not isinstance(config, DaemonConfig):
        return
    routes = _ApiRoutes(store, Mutables(Path(config.config_dir)), config)
    app.router.add_post("/link", routes.link)
    app.router.add_post("/mutables/get", routes.get)
    app.router.add_post("/mutables/set", routes.set)
    app.router.add_post("/mutables/delete", routes.delete)


async def _json(request: web.Request) -> dict[str, Any]:
    return await control_guard.json_object(request)


def _key(data: dict[str, Any]) -> Any:
    if "key" not in data or data["key"] is None:
        raise UsageError("missing key")
    return data["key"]


class _ApiRoutes:
    def __init__(self, store: ContentStore, mutables: Mutables, config: DaemonConfig) -> None:
        self.store = store
        self.mutables = mutables
        self.config = config

    async def link(self, request: web.Request) -> web.Response:
        data = await _json(request)
        path, name = data.get("path"), data.get("name")
        if not isinstance(path, str) or not isinstance(name, str):
            raise UsageError("link needs a path and a name")
        if not Path(path).is_absolute():
            raise UsageError(f"link needs an absolute path, not {path}")
        if not group_may_read(self.config, Path(path)):
            raise UsageError(f"cannot link {path}: this daemon is shared (--auth-group); link files the group can read")
        linked = await asyncio.to_thread(link_file, self.store, Path(path))
        return web.json_response({
            "uri": format_store_uri(linked.sha1, name, linked.manifest_sha1),
            "sha1": linked.sha1,
            "size": linked.size,
            "manifestSha1": linked.manifest_sha1,
            "path": str(linked.path),
        })

    async def get(self, request: web.Request) -> web.Response:
        found, value = await asyncio.to_thread(self.mutables.get, _key(await _json(request)))
        return web.json_response({"found": found, "value": value})

    async def set(self, request: web.Request) -> web.Response:
        data = await _json(request)
        if "value" not in data:
            raise UsageError("missing value")
        await asyncio.to_thread(self.mutables.set, _key(data), data["value"])
        return web.json_response({})

    async def delete(self, request: web.Request) -> web.Response:
        deleted = await asyncio.to_thread(self.mutables.delete, _key(await _json(request)))
        return web.json_response({"deleted": deleted})
