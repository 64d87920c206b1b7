"""Reading byte ranges of local files, and of files being downloaded, without blocking the event loop."""

from __future__ import annotations

import asyncio
import bisect
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StoreError, TransferCancelledError, UsageError
from ..ids import FileUri

if TYPE_CHECKING:
    from ..store import PartialFile
    from .running import RunningDownload

READ_BLOCK = 1 << 20


def refuse_peer_lookup(uri: FileUri) -> None:
    """Peers are asked by sha1 only: an md5:// URI can name a local file, never be looked up on peers."""
    if uri.algorithm != "sha1":
        raise UsageError(
            f"{uri.algorithm}:// URIs are not supported: peers are asked for files by sha1 only, and this"
            " node's store has no such file; use the file's sha1:// URI (kachery-p2p-store prints it)"
        )


async def read_file_range(path: Path, start: int, end: int, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
    """Yield bytes [start, end) of ``path`` in blocks. A block the page cache holds is read at once (a
    ``pread`` that may not wait for the disk); any other is read in a worker thread. A daemon busy sending
    hands a worker thread's result back only after waiting for Python's GIL, a few milliseconds each time:
    with a thread per block a peer's request waited 10-90 ms for its first bytes on a loaded host."""
    fd = os.open(path, os.O_RDONLY)  # a metadata call, like the stat the caller made
    try:
        position = start
        while position < end:
            size = min(block, end - position)
            data = read_cached(fd, size, position)
            if data is None:
                data = await asyncio.to_thread(os.pread, fd, size, position)
            if not data:
                raise StoreError(f"{path} is shorter than expected")
            position += len(data)
            yield data
    finally:
        os.close(fd)


_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
_nowait_works = True


def read_cached(fd: int, size: int, position: int) -> bytes | None:
    """Up to ``size`` bytes at ``position`` if the page cache has them (``preadv`` with RWF_NOWAIT never
    waits for the disk), else None: the caller reads them in a thread. None too where the platform or the
    file system has no RWF_NOWAIT (then never tried again)."""
    global _nowait_works
    if _NOWAIT is None or not _nowait_works:
        return None
    buffer = bytearray(size)
    try:
        count = os.preadv(fd, [buffer], position, _NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            _nowait_works = False
            return None
        raise
    if count <= 0:
        return None  # nothing cached (or the end): the thread's read says which
    return bytes(memoryview(buffer)[:count])


class RangeReader:
    """Streams [start, end) of a file being downloaded: each block as soon as its chunk is verified.

    ``opened`` and ``verified`` are the download's hooks; ``stream(entry)`` is the stream. The result of
    the entry's task is a path (the file was or became local) or an open descriptor on the partial data
    (every covering chunk verified), which the stream closes."""

    def __init__(self, start: int, end: int | None) -> None:
        self.start = start
        self.end = end if end is not None else 1 << 62  # set to the proven end before streaming
        self._size: int | None = None
        self._fd: int | None = None
        self._fds: set[int] = set()
        self._entry: RunningDownload | None = None
        self._complete = False  # every byte went out: let the download finish on its own
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._verified: set[int] = set()
        self._changed = asyncio.Event()

    def opened(self, partial: PartialFile) -> None:
        self._fd = os.open(partial.data_path, os.O_RDONLY)
        self._fds.add(self._fd)
        self._size = partial.size  # opened() is only called with a proven manifest (or a one-chunk file)
        self._starts = [chunk.start for chunk in partial.chunks]
        self._ends = [chunk.end for chunk in partial.chunks]
        self._verified = set(partial.verified_chunks())
        self._changed.set()

    def verified(self, index: int) -> None:
        self._verified.add(index)
        self._changed.set()

    def _readable_until(self, position: int) -> int | None:
        """End of the verified chunk holding ``position``, or None."""
        if self._fd is None:
            return None
        index = bisect.bisect_right(self._starts, position) - 1
        if index < 0 or index not in self._verified:
            return None
        return min(self._ends[index], self.end)

    async def proven_size(self, entry: RunningDownload) -> int:
        """The file's size once it is proven; the download's error if it fails first."""
        task = entry.task
        assert task is not None
        try:
            while self._size is None and not task.done():
                self._changed.clear()
                waiter = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            if self._size is not None:
                return self._size
            if task.cancelled():
                raise entry.error or TransferCancelledError("the read was cancelled")
            result = task.result()
            if isinstance(result, int):
                self._fds.add(result)
                return os.fstat(result).st_size
            return (await asyncio.to_thread(os.stat, result)).st_size
        except BaseException:
            self.abandon(entry)
            raise

    def abandon(self, entry: RunningDownload) -> None:
        """Nobody will read: stop the download and close what is open."""
        self._entry = entry
        entry.waiting += 1
        self.close()

    def stream(self, entry: RunningDownload) -> RangeStream:
        """The bytes, as an async iterator whose ``aclose`` also stops the download (if still running)."""
        self._entry = entry
        entry.waiting += 1
        return RangeStream(self._blocks(entry), self.close)

    def close(self) -> None:
        """Idempotent: stop the download if it still runs, close the descriptors."""
        entry, self._entry = self._entry, None
        if entry is None:
            return
        entry.waiting -= 1
        task = entry.task
        assert task is not None
        if not task.done():
            task.add_done_callback(_close_result_fd)  # the descriptor fetch_range may still return
            if not self._complete:
                entry.cancel(TransferCancelledError("no client is reading any more"))
        elif not task.cancelled() and task.exception() is None and isinstance(task.result(), int):
            self._fds.add(task.result())
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    async def _blocks(self, entry: RunningDownload, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
        task = entry.task
        assert task is not None
        try:
            position = self.start
            while position < self.end:
                until = self._readable_until(position)
                if until is not None and self._fd is not None:
                    data = await asyncio.to_thread(os.pread, self._fd, min(block, until - position), position)
                elif task.done():
                    if task.cancelled():
                        raise entry.error or TransferCancelledError("the read was cancelled")
                    result = task.result()
                    fd = result if isinstance(result, int) else await asyncio.to_thread(os.open, result, os.O_RDONLY)
                    self._fds.add(fd)
                    async for data in _pread_blocks(fd, position, self.end, block):
                        yield data
                    self._complete = True
                    return
                else:
                    self._changed.clear()
                    waiter = asyncio.ensure_future(self._changed.wait())
                    try:
                        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    continue
                if not data:
                    raise StoreError("file is shorter than expected")
                position += len(data)
                self._complete = position >= self.end
                yield data
        finally:
            self.close()


class RangeStream:
    """An async iterator over a generator, with an ``aclose`` that works before the first item too."""

    def __init__(self, blocks: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self._blocks = blocks
        self._on_close = on_close

    def __aiter__(self) -> RangeStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._blocks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._blocks.aclose()  # type: ignore[attr-defined]
        finally:
            self._on_close()


def _close_result_fd(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is None and isinstance(task.result(), int):
        os.close(task.result())  # type: ignore[arg-type]


async def _pread_blocks(fd: int, start: int, end: int, block: int) -> AsyncIterator[bytes]:
    position = start
    while position < end:
        data = await asyncio.to_thread(os.pread, fd, min(block, end - position), position)
        if not data:
            raise StoreError("file is shorter than expected")
        position += len(data)
        yield data
