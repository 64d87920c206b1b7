"""``within(awaitable, seconds)``: await with a time limit, raising ``TimeoutError`` when it passes.

Used instead of ``asyncio.wait_for``, which in Python 3.10 and 3.11 swallows a cancel that arrives in the
same loop turn as the inner wait's completion (the caller goes on as if never cancelled; bpo-42130,
fixed in 3.12 by building wait_for on ``asyncio.timeout``). On 3.11+ this is ``asyncio.timeout``; on
3.10 an equivalent timer that cancels the awaiting task. Either way the awaitable runs in the caller's
task: no extra task per call.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, or ``TimeoutError`` after ``seconds`` (the awaitable is cancelled)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await _within_310(awaitable, seconds)  # pragma: no cover - Python 3.10 only


async def _within_310(awaitable: Awaitable[T], seconds: float) -> T:  # pragma: no cover
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(max(0.0, seconds), expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if fired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        handle.cancel()
