"""read_file_range reads what the page cache holds at once (pread with RWF_NOWAIT) and anything else in a
worker thread: on a daemon busy sending, each worker thread's answer waited for the GIL, and a peer's
request waited 10-90 ms for its first bytes."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from kachery_p2p.daemon import files
from kachery_p2p.daemon.files import read_file_range

needs_nowait = pytest.mark.skipif(files._NOWAIT is None, reason="no preadv/RWF_NOWAIT on this platform")


def read_all(path: Path, start: int, end: int, block: int) -> bytes:
    async def go() -> bytes:
        return b"".join([chunk async for chunk in read_file_range(path, start, end, block=block)])

    return asyncio.run(go())


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(3 * 65536 + 123)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return path, data


@needs_nowait
def test_cached_blocks_are_read_without_a_worker_thread(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = data_file
    path.read_bytes()  # in the page cache now

    async def no_thread(*args: object) -> object:
        raise AssertionError("a cached block went to a worker thread")

    monkeypatch.setattr(files.asyncio, "to_thread", no_thread)
    assert read_all(path, 5, len(data) - 7, 65536) == data[5:-7]


def test_blocks_the_cache_does_not_hold_are_read_in_a_thread(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = data_file

    def not_cached(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        raise BlockingIOError(errno.EAGAIN, "would block")

    monkeypatch.setattr(files.os, "preadv", not_cached)
    assert read_all(path, 0, len(data), 65536) == data
    assert files._nowait_works  # "not cached" is no reason to stop asking the cache


def test_a_file_system_without_nowait_reads_are_served_from_threads(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = data_file
    calls = []

    def unsupported(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        calls.append(offset)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(files.os, "preadv", unsupported)
    monkeypatch.setattr(files, "_nowait_works", True)
    assert read_all(path, 0, len(data), 65536) == data
    assert len(calls) <= 1 and not files._nowait_works  # asked once, then never again


def test_a_file_shorter_than_the_range_is_an_error_not_a_hang(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    with pytest.raises(Exception, match="shorter than expected"):
        read_all(path, 0, len(data) + 10, 65536)
