"""What the dashboard shows, gathered from the node in one JSON object (sent every second)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..store.listing import list_store, store_usage
from .control_store import store_of, transfers_snapshot

STORE_REFRESH = 10.0
RECENT_FILES = 8


class DashboardState:
    def __init__(self, service: object) -> None:
        self.service = service
        self._store: dict[str, Any] | None = None
        self._store_at = 0.0
        self._store_task: asyncio.Task[dict[str, Any]] | None = None

    def changed(self) -> None:
        """Something the store summary shows may have changed: recompute it at the next collect."""
        self._store_at = 0.0

    async def _store_summary(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._store is None or now - self._store_at > STORE_REFRESH:
            if self._store_task is None or self._store_task.done():
                self._store_task = asyncio.ensure_future(asyncio.to_thread(_summarize, self.service))
            self._store = await asyncio.shield(self._store_task)
            self._store_at = time.monotonic()
        return self._store

    async def collect(self) -> dict[str, Any]:
        info: dict[str, Any] = dict(getattr(self.service, "node_info")())  # noqa: B009 - NodeService
        peers = list(getattr(self.service, "peers_info")())  # noqa: B009
        return {
            "now": time.time(),
            "node": {
                "nodeId": info.get("nodeId"),
                "label": info.get("label"),
                "version": info.get("daemonVersion"),
                "udpAddress": info.get("udpAddress"),
                "udpPort": info.get("udpPort"),
                "apiPort": info.get("apiPort"),
                "relayMode": bool(info.get("relayMode")),
                "relays": info.get("relays") or {},
                "candidates": info.get("candidates") or [],
                "nat": info.get("nat"),
                "uptimeSec": info.get("uptimeSec"),
                "bytesServed": info.get("bytesServed"),
                "bytesDownloaded": info.get("bytesDownloaded"),
                "storageDir": info.get("storageDir"),
            },
            "relay": info.get("relay"),
            "channels": info.get("channels", []),
            "peers": peers,
            "transfers": transfers_snapshot(self.service),
            "store": await self._store_summary(),
        }


def _summarize(service: object) -> dict[str, Any]:
    store = store_of(service)
    usage = store_usage(store)
    usage["recent"] = [e.to_json() for e in list_store(store)[:RECENT_FILES]]
    return usage
