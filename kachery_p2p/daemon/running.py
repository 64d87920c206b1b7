"""The downloads running in the daemon, one per file, shared by every client that waits for it.

A download runs as its own task while at least one client follows it (``follow``). Each follower hears
each change of phase at once (searching, then queued or downloading as soon as providers are found: the
line a client times the start of the transfer by), bytes as they arrive at most every
``PROGRESS_INTERVAL`` seconds, and, when nothing changes, a heartbeat every ``HEARTBEAT_INTERVAL`` seconds:
a client that hears nothing for much longer knows the daemon is stuck, not the link slow. When the
last follower leaves, the download stops (verified chunks stay in the partial file for a resume) and
one line is logged. The transfers list and its cancel (``kachery-p2p-transfers``) are activity.py's.

A download fails on its own only when no byte arrived for ``STALL_TIMEOUT`` seconds: slow is fine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DaemonError, KacheryP2PError, NotFoundError, TransferCancelledError
from ..ids import FileUri

if TYPE_CHECKING:
    from .download import Download

log = logging.getLogger("kachery_p2p.transfers")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
HEARTBEAT_INTERVAL = 2.0
PROGRESS_INTERVAL = 0.25
STALL_TIMEOUT = 600.0


class RunningDownload:
    """One download: its task, its live figures, and who waits for it."""

    def __init__(self, uri: FileUri, kind: str) -> None:
        self.uri = uri
        self.kind = kind
        self._phase = "searching"
        self._wakers: set[asyncio.Event] = set()  # one per follower: set on each change of phase
        self.started_at = time.time()
        self.waiting = 0
        self.download: Download | None = None
        self.task: asyncio.Task[Any] | None = None
        self.error: KacheryP2PError | None = None
        self.bad_providers: list[str] = []
        self.first_byte_sec: float | None = None

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value != self._phase:
            self._phase = value
            for waker in self._wakers:
                waker.set()

    @property
    def bytes_received(self) -> int:
        return self.download.bytes_received if self.download is not None else 0

    def progress(self) -> dict[str, Any]:
        message: dict[str, Any] = {"phase": self.phase}
        download = self.download
        if download is not None:
            message.update(live_progress(download))
            if download.first_byte_at is not None:
                message["firstByteSec"] = round(download.first_byte_at - download.started, 4)
        return message

    def stalled(self, now: float) -> bool:
        download = self.download
        return download is not None and self.phase == "downloading" and now - download.last_byte_at > STALL_TIMEOUT

    def cancel(self, error: KacheryP2PError) -> bool:
        """Stop the download; its followers get ``error``. False if it had already ended."""
        if self.task is None or self.task.done():
            return False
        if self.error is None:
            self.error = error
        self.task.cancel()
        return True


class DownloadRegistry:
    """Running downloads; loads of one file share one entry."""

    def __init__(self) -> None:
        self._running: set[RunningDownload] = set()
        self._shared: dict[str, RunningDownload] = {}
        self.stopped = False

    def start(
        self, uri: FileUri, kind: str, run: Callable[[RunningDownload], Awaitable[Any]], share: bool = True
    ) -> RunningDownload:
        """The running entry for ``uri`` (``share``), or a new one running ``run(entry)``."""
        key = f"{kind}:{uri.hash}"
        if share:
            entry = self._shared.get(key)
            if entry is not None and entry.task is not None and not entry.task.done():
                return entry
        entry = RunningDownload(uri, kind)
        entry.task = asyncio.ensure_future(run(entry))
        self._running.add(entry)
        if share:
            self._shared[key] = entry

        def forget(_task: asyncio.Task[Any]) -> None:
            self._running.discard(entry)
            if self._shared.get(key) is entry:
                del self._shared[key]

        entry.task.add_done_callback(forget)
        return entry

    def stop_all(self, error: KacheryP2PError) -> None:
        self.stopped = True
        for entry in list(self._running):
            entry.cancel(error)

    async def follow(self, entry: RunningDownload, progress: Progress | None) -> Any:
        """Wait for ``entry`` to finish, telling ``progress`` as it goes; the result or its error.

        If ``progress`` raises (the client went away) or this waiter is cancelled, it stops following;
        the download stops when no one follows it any more."""
        task = entry.task
        assert task is not None
        entry.waiting += 1
        waker = asyncio.Event()
        entry._wakers.add(waker)
        try:
            last: dict[str, Any] | None = None
            sent_at = 0.0
            while not task.done():
                waker.clear()  # before reading the phase: a change from now on wakes the wait below
                now = time.monotonic()
                if entry.stalled(now):
                    entry.cancel(DaemonError(f"no byte arrived for {STALL_TIMEOUT:g} s: gave up on {entry.uri.hash}"))
                if progress is not None:
                    message = entry.progress()
                    # A new phase goes out at once; byte counts at most every PROGRESS_INTERVAL.
                    new_phase = last is None or last["phase"] != message["phase"]
                    since = now - sent_at
                    if new_phase or (message != last and since >= PROGRESS_INTERVAL) or since >= HEARTBEAT_INTERVAL:
                        await progress(message)
                        last, sent_at = message, now
                        continue
                woken: asyncio.Future[Any] = asyncio.ensure_future(waker.wait())
                try:
                    await asyncio.wait({task, woken}, timeout=PROGRESS_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
            if task.cancelled():
                raise entry.error or TransferCancelledError("the download was cancelled")
            result = task.result()
            if progress is not None:
                await progress(entry.progress())
                if entry.bad_providers:
                    await progress({"badProviders": entry.bad_providers})
            return result
        finally:
            entry._wakers.discard(waker)
            entry.waiting -= 1
            if entry.waiting == 0 and not task.done():
                self._abandon(entry)

    def _abandon(self, entry: RunningDownload) -> None:
        received = entry.bytes_received
        entry.cancel(TransferCancelledError("no client is waiting for the download any more"))
        log.info(
            "%s of %s stopped: no client is waiting any more (%d bytes received; verified chunks kept)",
            entry.kind, entry.uri.hash, received,
        )


def path_result(value: Any) -> Path:
    if not isinstance(value, Path):
        raise NotFoundError("the download ended without a file")
    return value


def live_progress(download: Download) -> dict[str, Any]:
    """Bytes so far, counted as they arrive (resumed chunks included), for progress lines."""
    plan = download.plan
    banned = plan.banned if plan is not None else set()
    message: dict[str, Any] = {"providers": len([p for p in download.providers if p.node_id not in banned])}
    if plan is None and download.providers:
        message.update(bytesLoaded=0, bytesTotal=download.providers[0].size)
    elif plan is not None:
        loaded = plan.total_bytes if plan.finished else plan.bytes_resumed + download.bytes_received
        message.update(bytesLoaded=min(loaded, plan.total_bytes), bytesTotal=plan.total_bytes)
        message["paths"] = sorted({p.session.link.path.kind for p in download.providers})
    return message
