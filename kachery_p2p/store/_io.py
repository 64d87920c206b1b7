"""Small blocking-I/O helpers shared by the store modules (temp files, locks, error wording).

Callers use these through the module (``_io.write_all(...)``) so tests can replace one helper to
simulate a failing disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

BLOCK_SIZE = 1024 * 1024
"""Read/write block size: 1 MiB."""


def describe(exc: OSError, action: str) -> str:
    """One line for the user: 'no space left on device while storing /x', 'reading /x failed: ...'."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while {action}"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while {action}"
    return f"{action} failed: {exc.strerror or exc}"


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (os.write may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """os.pwrite until every byte is written at ``offset``."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def iter_pread(fd: int, start: int, end: int) -> Iterator[bytes]:
    """Blocks of at most 1 MiB of bytes ``[start, end)`` read with os.pread; OSError if the file is short."""
    pos = start
    while pos < end:
        block = os.pread(fd, min(BLOCK_SIZE, end - pos), pos)
        if not block:
            raise OSError(errno.EIO, f"file ends at byte {pos}, expected {end}")
        pos += len(block)
        yield block


def remove_quietly(path: Path) -> bool:
    """Unlink ``path``; True if it was removed, False if it was not there or could not be removed."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def close_quietly(fd: int) -> None:
    """os.close, ignoring errors (for clean-up paths)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class TempFile:
    """A unique file ``<directory>/<prefix>-XXXXXXXX.tmp`` opened for writing (mode 0600).

    The writer holds an flock on it while it is open: a temp file nobody holds a lock on belongs to
    a writer that is gone (finished or killed) and can never be resumed (``is_abandoned``).
    """

    def __init__(self, directory: Path, prefix: str) -> None:
        fd, name = tempfile.mkstemp(prefix=f"{prefix}-", suffix=".tmp", dir=directory)
        with contextlib.suppress(OSError):  # a filesystem without flock: the age rule still applies
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.fd: int = fd
        self.path = Path(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        write_all(self.fd, data)

    def sync_and_close(self) -> None:
        """flush to disk and close; the file stays for the caller to rename."""
        fd, self.fd = self.fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Close (if still open) and delete; never raises."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            close_quietly(fd)
        remove_quietly(self.path)


def remove_if_abandoned(path: Path) -> bool:
    """Delete a TempFile whose writer is gone (no one holds its flock); True if it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: a live writer holds it
        close_quietly(fd)
        return False
    try:
        return remove_quietly(path)
    finally:
        close_quietly(fd)


class LockFile:
    """An exclusive ``fcntl.flock`` on a small lock file, safe against the file being unlinked.

    flock locks belong to an open file description, so two opens in one process exclude each
    other just like two processes do.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def try_acquire(cls, path: Path, create: bool = True) -> LockFile | None:
        """The lock, or None if someone else holds it (or it does not exist and create is False)."""
        while True:
            try:
                fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                if create:
                    raise
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            # The holder before us may have unlinked the file on release: then we locked an orphan.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                return cls(fd, path)
            os.close(fd)
            if not create:
                return None

    def release(self, remove: bool = False) -> None:
        """Give the lock up, deleting the lock file first when ``remove`` (never raises)."""
        if self._fd < 0:
            return
        if remove:
            remove_quietly(self.path)
        fd, self._fd = self._fd, -1
        close_quietly(fd)
