"""Background tasks of a node, supervised: a failure is logged with its traceback, never lost.

``spawn`` runs a coroutine once; ``keep_running`` runs a coroutine factory for as long as the node
runs and starts it again after an unexpected error (with a growing delay), for the tasks that keep
the node reachable (dialing its relays and bootstrap peers, the keepalive).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("kachery_p2p.tasks")

RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0


class Supervisor:
    """Owns a set of tasks; ``cancel_all`` ends them (at node stop)."""

    def __init__(self, restart_delay: float = RESTART_DELAY) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.restart_delay = restart_delay
        self.failures = 0
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; an exception it raises is logged with its traceback."""
        task = asyncio.ensure_future(coro)
        if name is not None:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def keep_running(
        self, factory: Callable[[], Awaitable[Any]], name: str, alive: Callable[[], bool] = lambda: True
    ) -> asyncio.Task[Any]:
        """Run ``factory()`` and start it again whenever it fails (or returns) until cancelled, or
        until ``alive()`` is false (e.g. the session the task serves has ended)."""
        return self.spawn(self._restarting(factory, name, alive), name)

    async def _restarting(self, factory: Callable[[], Awaitable[Any]], name: str, alive: Callable[[], bool]) -> None:
        delay = self.restart_delay
        while alive():
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("background task %s failed; starting it again in %g s", name, delay)
            else:
                delay = self.restart_delay
            if not alive():
                return
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.failures += 1
            log.error("background task %s failed", task.get_name(), exc_info=error)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
