"""BlobWriter: receive one whole blob (a manifest, a small file), verify it, then add it to the store.

    with store.open_blob_writer(sha1, size) as writer:
        for data in stream:
            writer.write(data)
        path = writer.commit()        # VerificationError if the bytes do not hash to sha1

Leaving the ``with`` block without ``commit()`` (or with an exception) aborts: the temp file is
removed and nothing reaches the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ..errors import StoreError, UsageError, VerificationError
from . import _io
from .layout import content_relpath

Installer = Callable[[Path, str], Path]
"""Moves a finished temp file into the store under a sha1 and returns the content path."""


class BlobWriter:
    """Streams bytes to a temp file under ``<root>/tmp`` while hashing them. Not thread-safe."""

    def __init__(self, temp_dir: Path, install: Installer, expected_sha1: str,
                 expected_size: int | None = None) -> None:
        content_relpath(expected_sha1)  # UsageError for a malformed hash
        if expected_size is not None and expected_size < 0:
            raise UsageError(f"negative expected size {expected_size}")
        self.sha1 = expected_sha1.lower()
        self.expected_size = expected_size
        self._install = install
        self._hasher = hashlib.sha1()
        self._size = 0
        self._state = "open"
        try:
            self._temp = _io.TempFile(temp_dir, "blob")
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"creating a temp file for {self.sha1}")) from exc

    @property
    def bytes_written(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes; VerificationError (and abort) as soon as more than expected_size arrive."""
        self._check_open()
        view = memoryview(data).cast("B")
        if self.expected_size is not None and self._size + len(view) > self.expected_size:
            self.abort()
            raise VerificationError(
                f"received more than the expected {self.expected_size} bytes for {self.sha1}"
            )
        self._hasher.update(view)
        try:
            self._temp.write(view)
        except OSError as exc:
            self.abort()
            raise StoreError(_io.describe(exc, f"writing {self.sha1}")) from exc
        self._size += len(view)

    def commit(self) -> Path:
        """fsync, verify size and sha1, move into the store; the content path."""
        self._check_open()
        try:
            self._temp.sync_and_close()
        except OSError as exc:
            self.abort()
            raise StoreError(_io.describe(exc, f"writing {self.sha1}")) from exc
        if self.expected_size is not None and self._size != self.expected_size:
            self.abort()
            raise VerificationError(
                f"received {self._size} bytes for {self.sha1}, expected {self.expected_size}"
            )
        got = self._hasher.hexdigest()
        if got != self.sha1:
            self.abort()
            raise VerificationError(f"received bytes hash to {got}, expected {self.sha1}")
        self._state = "committed"
        return self._install(self._temp.path, self.sha1)

    def abort(self) -> None:
        """Drop everything written so far (idempotent; a no-op after commit)."""
        if self._state == "open":
            self._state = "aborted"
            self._temp.discard()

    def _check_open(self) -> None:
        if self._state != "open":
            raise UsageError(f"BlobWriter for {self.sha1} is already {self._state}")

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()
