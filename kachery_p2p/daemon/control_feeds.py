"""Control-endpoint routes of feeds (registered by ``control.make_app``); JSON in, JSON out.

    POST /feed/create          {feedName?}                       -> {feedId}
    POST /feed/feed-id         {feedName}                        -> {feedId | null}
    POST /feed/load            {feedId}                          -> {feedId, isWriteable, nodeId}
    POST /feed/delete          {feedId}                          -> {deleted}
    GET  /feed/list                                              -> {feeds, faults, subscriptions}
    POST /feed/append          {feedId, subfeedHash, messages}   -> {numMessages}
    POST /feed/submit          {feedId, subfeedHash, messages}   -> {messageNumbers}
    POST /feed/watch           {watches: {name: {feedId, subfeedHash, position}}, waitMsec, signed,
                                maxNumMessages}                  -> {messages: {name: [...]}}
    POST /feed/num-messages    {feedId, subfeedHash}             -> {numMessages}
    POST /feed/access-rules    {feedId, subfeedHash}             -> {rules: [...]}
    POST /feed/set-access-rules {feedId, subfeedHash, accessRules} -> {}

``/feed/watch`` answers as soon as one watched subfeed has a message after its position (or after
``waitMsec``, at most 120 s).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import FeedPermissionError, NotFoundError, UsageError
from . import control_guard
from .feeds_service import FeedService

Route = Callable[[FeedService, dict[str, Any]], Awaitable[dict[str, Any]]]


def register_feed_routes(app: web.Application, service: Any) -> None:
    """Add the routes if ``service`` (the Node) has feeds; the control guard checks the token first."""
    feeds = getattr(service, "feeds", None)
    if not isinstance(feeds, FeedService):
        return
    for name, route in _ROUTES.items():
        app.router.add_post(f"/feed/{name}", _handler(feeds, route))
    app.router.add_get("/feed/list", _handler(feeds, _list))


def _handler(feeds: FeedService, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        data: dict[str, Any] = {}
        if request.method == "POST":
            data = await control_guard.json_object(request)
        try:
            return web.json_response(await route(feeds, data))
        except FeedPermissionError as exc:
            return web.json_response({"error": {"code": "not_authorized", "message": str(exc)}}, status=403)

    return handle


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise UsageError(f"missing {key}")
    return value


def _messages(data: dict[str, Any]) -> list[Any]:
    value = data.get("messages")
    if not isinstance(value, list):
        raise UsageError("messages must be a list")
    return value


async def _create(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    name = data.get("feedName")
    if name is not None and not isinstance(name, str):
        raise UsageError("feedName must be a string")
    return {"feedId": feeds.create_feed(name)}


async def _feed_id(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    return {"feedId": feeds.feed_id_for_name(_str(data, "feedName"))}


async def _load(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    return feeds.load_feed(_str(data, "feedId"))


async def _delete(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    return {"deleted": feeds.delete_feed(_str(data, "feedId"))}


async def _list(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"feeds": feeds.list_feeds(), "faults": list(feeds.faults)}
    if feeds.peers is not None:
        result.update(feeds.peers.info())
    return result


async def _append(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    count = await feeds.append(_str(data, "feedId"), _str(data, "subfeedHash"), _messages(data))
    return {"numMessages": count}


async def _submit(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    feed_id, subfeed_hash = _str(data, "feedId"), _str(data, "subfeedHash")
    messages = _messages(data)
    feeds.subfeed(feed_id, subfeed_hash)  # validates both
    if feeds.is_owner(feed_id):
        count = await feeds.append(feed_id, subfeed_hash, messages)
        return {"messageNumbers": list(range(count - len(messages), count))}
    if feeds.peers is None:
        raise NotFoundError("no peer network: cannot reach the feed's owner")
    return {"messageNumbers": [await feeds.peers.submit(feed_id, subfeed_hash, m) for m in messages]}


async def _watch(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    watches = data.get("watches")
    if not isinstance(watches, dict):
        raise UsageError("watches must be an object")
    wait_msec = data.get("waitMsec", 0)
    limit = data.get("maxNumMessages", 0)
    if not isinstance(wait_msec, (int, float)) or isinstance(wait_msec, bool) or wait_msec < 0:
        raise UsageError("waitMsec must be a non-negative number")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise UsageError("maxNumMessages must be a non-negative integer")
    return {"messages": await feeds.watch(watches, float(wait_msec), bool(data.get("signed")), limit)}


async def _num_messages(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    return {"numMessages": feeds.num_messages(_str(data, "feedId"), _str(data, "subfeedHash"))}


async def _access_rules(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    return feeds.access_rules(_str(data, "feedId"), _str(data, "subfeedHash"))


async def _set_access_rules(feeds: FeedService, data: dict[str, Any]) -> dict[str, Any]:
    feeds.set_access_rules(_str(data, "feedId"), _str(data, "subfeedHash"), data.get("accessRules"))
    return {}


_ROUTES: dict[str, Route] = {
    "create": _create,
    "feed-id": _feed_id,
    "load": _load,
    "delete": _delete,
    "append": _append,
    "submit": _submit,
    "watch": _watch,
    "num-messages": _num_messages,
    "access-rules": _access_rules,
    "set-access-rules": _set_access_rules,
}
