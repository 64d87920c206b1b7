"""The rounds of a download: every live provider's streams at work, again while pieces are left; and, when
every provider known so far has failed, a wait for the ones the search may still find."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import StoreError
from ..transfer.plan import DownloadPlan
from .slow import Provider

STREAMS_PER_PROVIDER = 4
MAX_ROUNDS = 5


class Arrivals:
    """Providers a download may still get from a search that goes on (from ``expect`` until ``ended``)."""

    def __init__(self) -> None:
        self.searching = False
        self._new = False
        self._changed = asyncio.Event()

    def expect(self) -> None:
        self.searching = True

    def ended(self) -> None:
        self.searching = False
        self._changed.set()

    def arrived(self) -> None:
        self._new = True
        self._changed.set()

    async def wait(self) -> bool:
        """True once a provider arrived since the last wait (at once if one did); False when the search has
        ended (or never ran) with none."""
        while not self._new and self.searching:
            self._changed.clear()
            await self._changed.wait()
        new, self._new = self._new, False
        return new


async def run_rounds(
    providers: list[Provider],
    plan: DownloadPlan,
    worker: Callable[[Provider], Awaitable[None]],
    workers: list[asyncio.Future[None]],
    finished: asyncio.Event,
    verifying: set[asyncio.Task[None]],
    fatal: list[StoreError],
    arrivals: Arrivals | None = None,
) -> None:
    """Workers for every live provider of ``providers`` (a list the download extends as providers join),
    again (at most MAX_ROUNDS times) while work is left. When no provider is left, or the rounds are used up,
    and the search may still find providers (``arrivals``), wait for one: its arrival gives fresh rounds."""
    rounds = 0
    while not plan.finished and not fatal:
        live = [p for p in providers if p.node_id not in plan.banned and p.alive]
        if not live or rounds >= MAX_ROUNDS:
            if arrivals is None or not await arrivals.wait():
                break
            rounds = 0
            continue
        rounds += 1
        plan.workers = len(live) * STREAMS_PER_PROVIDER
        workers[:] = [asyncio.ensure_future(worker(p)) for p in live for _ in range(STREAMS_PER_PROVIDER)]
        await _one_round(workers, finished, verifying)


async def _one_round(
    workers: list[asyncio.Future[None]], finished: asyncio.Event, verifying: set[asyncio.Task[None]]
) -> None:
    finished_wait: asyncio.Future[Any] = asyncio.ensure_future(finished.wait())
    try:
        # Done when every chunk is verified, even if a vanished provider's streams still hang; otherwise
        # when every stream has ended, those of providers that joined during the round included (their
        # pieces in flight were cancelled with the round's end when only the first streams were awaited).
        while not finished.is_set() and (running := [task for task in workers if not task.done()]):
            await asyncio.wait({*running, finished_wait}, return_when=asyncio.FIRST_COMPLETED)
        while verifying:
            await asyncio.gather(*list(verifying))
    finally:
        finished_wait.cancel()
        # (a provider may join while the others are being stopped: until none is left running)
        while running := [task for task in workers if not task.done()]:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    for task in workers:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
