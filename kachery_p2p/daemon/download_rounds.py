"""The rounds of a download: every live provider's streams at work, again while pieces are left."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import StoreError
from ..transfer.plan import DownloadPlan
from .slow import Provider

STREAMS_PER_PROVIDER = 4
MAX_ROUNDS = 5


async def run_rounds(
    providers: list[Provider],
    plan: DownloadPlan,
    worker: Callable[[Provider], Awaitable[None]],
    workers: list[asyncio.Future[None]],
    finished: asyncio.Event,
    verifying: set[asyncio.Task[None]],
    fatal: list[StoreError],
) -> None:
    """Workers for every live provider of ``providers`` (a list the download extends as providers join),
    again (at most MAX_ROUNDS times) while work is left."""
    for _round in range(MAX_ROUNDS):
        live = [p for p in providers if p.node_id not in plan.banned and p.alive]
        if plan.finished or not live or fatal:
            break
        plan.workers = len(live) * STREAMS_PER_PROVIDER
        workers[:] = [asyncio.ensure_future(worker(p)) for p in live for _ in range(STREAMS_PER_PROVIDER)]
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

