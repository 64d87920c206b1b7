"""Reading byte ranges of local files without blocking the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import StoreError

READ_BLOCK = 1 << 20


async def read_file_range(path: Path, start: int, end: int, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
    """Yield bytes [start, end) of ``path`` in blocks read in a worker thread."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        position = start
        while position < end:
            data = await asyncio.to_thread(os.pread, fd, min(block, end - position), position)
            if not data:
                raise StoreError(f"{path} is shorter than expected")
            position += len(data)
            yield data
    finally:
        os.close(fd)


async def read_fd_range(fd: int, start: int, end: int, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
    """Like read_file_range on an already open descriptor, which it closes at the end."""
    try:
        position = start
        while position < end:
            data = await asyncio.to_thread(os.pread, fd, min(block, end - position), position)
            if not data:
                raise StoreError("file is shorter than expected")
            position += len(data)
            yield data
    finally:
        os.close(fd)
