"""What the node is transferring right now: downloads, uploads to peers, and the recent ones.

Read by ``kachery-p2p-transfers`` and the dashboard; ``cancel`` stops a download (its verified chunks
stay in the partial file for a later resume). The bookkeeping takes ``now`` (monotonic seconds); the only
asyncio here is the task handle a download is cancelled through and the timer that retires idle uploads.
At INFO level it logs one line per finished load and one per file served to a peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TransferCancelledError
from ..quic.identity import short_node_id

log = logging.getLogger("kachery_p2p.transfers")

RATE_WINDOW = 3.0
STALLED = 15.0  # no progress for this long: the rate shows 0
UPLOAD_IDLE = 3.0
RECENT = 20

Progress = Callable[[dict[str, Any]], Awaitable[None]]


class RateMeter:
    """Bytes per second over the last ``RATE_WINDOW`` seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, total: int, now: float) -> None:
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        """Bytes since the oldest sample kept, over the time since then (progress may come in bursts)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if now - t1 > STALLED:
            return 0.0
        return (b1 - b0) / max(now - t0, 1e-3)


@dataclass
class DownloadEntry:
    uri: str
    sha1: str
    size: int
    providers: list[str]
    started: float
    task: asyncio.Task[Any] | None = None
    state: str = "waiting"  # waiting (for a download slot), downloading
    bytes: int = 0
    paths: list[str] = field(default_factory=list)
    cancelled: bool = False
    meter: RateMeter = field(default_factory=RateMeter)

    def info(self, now: float) -> dict[str, Any]:
        rate = self.meter.rate(now)
        remaining = max(0, self.size - self.bytes)
        return {
            "direction": "download",
            "uri": self.uri,
            "sha1": self.sha1,
            "state": self.state,
            "bytes": self.bytes,
            "size": self.size,
            "rate": round(rate, 1),
            "etaSec": round(remaining / rate, 1) if rate > 0 else None,
            "providers": list(self.providers),
            "paths": list(self.paths),
            "elapsedSec": round(now - self.started, 3),
        }


@dataclass
class UploadEntry:
    peer: str
    label: str
    path: str
    sha1: str
    size: int
    started: float
    last: float
    bytes: int = 0
    meter: RateMeter = field(default_factory=RateMeter)

    def info(self, now: float) -> dict[str, Any]:
        return {
            "direction": "upload",
            "uri": f"sha1://{self.sha1}",
            "sha1": self.sha1,
            "bytes": self.bytes,
            "size": self.size,
            "rate": round(self.meter.rate(now), 1),
            "peer": self.peer,
            "label": self.label,
            "path": self.path,
            "elapsedSec": round(now - self.started, 3),
        }


class Activity:
    """Registry of the transfers in progress (one download per file; one upload per peer and file)."""

    def __init__(self) -> None:
        self.downloads: dict[str, DownloadEntry] = {}
        self.uploads: dict[tuple[str, str], UploadEntry] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    # -- downloads ----------------------------------------------------------------------------------
    def download_started(
        self, uri: str, sha1: str, size: int, providers: list[str], now: float, task: asyncio.Task[Any] | None
    ) -> DownloadEntry:
        entry = DownloadEntry(uri=uri, sha1=sha1, size=size, providers=providers, started=now, task=task)
        entry.meter.update(0, now)
        self.downloads[sha1] = entry
        return entry

    def download_progress(self, entry: DownloadEntry, message: dict[str, Any], now: float) -> None:
        loaded = message.get("bytesLoaded")
        if isinstance(loaded, int):
            entry.state = "downloading"
            entry.bytes = loaded
            entry.meter.update(loaded, now)
        paths = message.get("paths")
        if isinstance(paths, list):
            entry.paths = [str(p) for p in paths]

    def provider_joined(self, sha1: str, node_id: str) -> None:
        """A provider found after the download started joined it: it is listed from now on."""
        entry = self.downloads.get(sha1)
        if entry is not None and node_id not in entry.providers:
            entry.providers.append(node_id)

    def download_finished(self, entry: DownloadEntry, outcome: str, now: float, error: str = "") -> dict[str, Any]:
        """Retire the entry; ``outcome`` is done, cancelled or failed. Logs one line for a finished load."""
        if self.downloads.get(entry.sha1) is entry:
            del self.downloads[entry.sha1]
        seconds = max(now - entry.started, 1e-6)
        record = {**entry.info(now), "state": outcome, "seconds": round(seconds, 3), "endedAt": time.time()}
        if outcome == "done":
            record["bytes"] = entry.size
            record["rate"] = round(entry.size / seconds, 1)
            log.info(
                "loaded %s: %d bytes in %.2f s (%.2f MB/s) from %d provider%s (%s)",
                entry.uri, entry.size, seconds, entry.size / seconds / 1e6, len(entry.providers),
                "" if len(entry.providers) == 1 else "s", ", ".join(entry.paths) or "-",
            )
        elif outcome == "cancelled":
            log.info("cancelled the download of %s at %d of %d bytes", entry.uri, entry.bytes, entry.size)
        else:
            record["error"] = error
        self.recent.appendleft(record)
        return record

    def cancel(self, sha1: str) -> bool:
        """Stop the download of ``sha1``; False when none is in progress."""
        entry = self.downloads.get(sha1.lower())
        if entry is None or entry.task is None or entry.task.done():
            return False
        entry.cancelled = True
        entry.task.cancel()
        return True

    # -- uploads ------------------------------------------------------------------------------------
    def served(self, peer: str, label: str, path: str, sha1: str, size: int, nbytes: int, now: float) -> bool:
        """Count ``nbytes`` of ``sha1`` sent to ``peer``; True when this starts a new upload entry."""
        key = (peer, sha1)
        entry = self.uploads.get(key)
        new = entry is None
        if entry is None:
            entry = self.uploads[key] = UploadEntry(peer, label, path, sha1, size, started=now, last=now)
            entry.meter.update(0, now)
        entry.bytes += nbytes
        entry.last = now
        entry.meter.update(entry.bytes, now)
        return new

    def retire_idle_uploads(self, now: float) -> float | None:
        """Retire uploads idle for ``UPLOAD_IDLE`` s (one log line each); seconds until the next check."""
        next_check: float | None = None
        for key, entry in list(self.uploads.items()):
            idle = now - entry.last
            if idle >= UPLOAD_IDLE:
                del self.uploads[key]
                log.info(
                    "served sha1://%s to %s (%s): %d bytes in %.2f s",
                    entry.sha1, short_node_id(entry.peer), entry.label, entry.bytes, entry.last - entry.started,
                )
                self.recent.appendleft({**entry.info(now), "state": "done", "endedAt": time.time()})
            else:
                wait = UPLOAD_IDLE - idle
                next_check = wait if next_check is None else min(next_check, wait)
        return next_check

    # -- reading ------------------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "downloads": [e.info(now) for e in self.downloads.values()],
            "uploads": [e.info(now) for e in self.uploads.values()],
            "recent": list(self.recent),
        }


class ActivityPump:
    """The asyncio side: monotonic time, and a timer that retires idle uploads."""

    def __init__(self, activity: Activity | None = None) -> None:
        self.activity = activity or Activity()
        self._timer: asyncio.TimerHandle | None = None

    def served(self, peer: str, label: str, path: str, sha1: str, size: int, nbytes: int) -> None:
        self.activity.served(peer, label, path, sha1, size, nbytes, time.monotonic())
        if self._timer is None:
            self._schedule(UPLOAD_IDLE)

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(delay + 0.05, self._tick)

    def _tick(self) -> None:
        self._timer = None
        wait = self.activity.retire_idle_uploads(time.monotonic())
        if wait is not None:
            self._schedule(wait)

    def snapshot(self) -> dict[str, Any]:
        return self.activity.snapshot(time.monotonic())

    def provider_joined(self, sha1: str, node_id: str) -> None:
        self.activity.provider_joined(sha1, node_id)

    def cancel(self, sha1: str) -> bool:
        return self.activity.cancel(sha1)

    async def track_load(
        self,
        uri: str,
        sha1: str,
        size: int,
        providers: list[str],
        progress: Progress,
        run: Callable[[Progress], Awaitable[Path]],
    ) -> Path:
        """Run a download (``run``), registered for listing and cancel while it runs."""
        entry = self.activity.download_started(
            uri, sha1, size, providers, time.monotonic(), asyncio.current_task()
        )

        async def tracked(message: dict[str, Any]) -> None:
            self.activity.download_progress(entry, message, time.monotonic())
            await progress(message)

        try:
            path = await run(tracked)
        except asyncio.CancelledError:
            if not entry.cancelled:
                self.activity.download_finished(entry, "failed", time.monotonic(), "stopped")
                raise
            self.activity.download_finished(entry, "cancelled", time.monotonic())
            raise TransferCancelledError(
                f"the download of {uri} was cancelled ({entry.bytes} of {size} bytes; verified chunks are kept)"
            ) from None
        except BaseException as exc:
            self.activity.download_finished(entry, "failed", time.monotonic(), str(exc))
            raise
        self.activity.download_finished(entry, "done", time.monotonic())
        return path

    def count_upload(
        self, peer: str, label: str, path: str, sha1: str, size: int, blocks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """``blocks`` on their way to a peer, counted as they go."""
        return self._counted(peer, label, path, sha1, size, blocks)

    async def _counted(
        self, peer: str, label: str, path: str, sha1: str, size: int, blocks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        async for block in blocks:
            self.served(peer, label, path, sha1, size, len(block))
            yield block
