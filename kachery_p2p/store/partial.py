"""PartialFile: a resumable download, written chunk by chunk in any order.

Files under ``<root>/tmp``::

    partial-<sha1>.data    the file being assembled, truncated (sparse) to its final size
    partial-<sha1>.json    sidecar: {"sha1","size","manifest","verified":[chunk indexes]}
    partial-<sha1>.lock    flock'ed while a PartialFile is open

The sidecar is replaced atomically (temp + rename) after the data file is fdatasync'ed, each time a
chunk is marked verified; reopening after a crash resumes from it when sha1, size and chunk layout
match, and starts over otherwise. One PartialFile per sha1 at a time: a second open, from this
process or another, raises StoreError("download of <sha1> already in progress"). Methods are safe
to call from several threads (writes to different chunks may run concurrently).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import threading
import weakref
from pathlib import Path
from types import TracebackType

from ..errors import StoreError, UsageError, VerificationError
from . import _io
from .blobwriter import Installer
from .layout import content_relpath
from .manifest import Manifest, ManifestChunk


class _Handles:
    """The OS resources of a PartialFile, closable from a weakref finalizer."""

    def __init__(self, fd: int, lock: _io.LockFile) -> None:
        self.fd = fd
        self.lock = lock

    def close(self, remove_lock: bool) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            _io.close_quietly(fd)
        self.lock.release(remove=remove_lock)


class PartialFile:
    """A download in progress. Get one from ``ContentStore.open_partial``."""

    def __init__(self, temp_dir: Path, install: Installer, sha1: str, size: int,
                 manifest: Manifest | None) -> None:
        content_relpath(sha1)  # UsageError for a malformed hash
        sha1 = sha1.lower()
        if size < 0:
            raise UsageError(f"negative size {size} for {sha1}")
        if manifest is not None:
            if manifest.sha1 != sha1 or manifest.size != size:
                raise VerificationError(
                    f"manifest describes {manifest.sha1} ({manifest.size} bytes), not {sha1} ({size} bytes)"
                )
            self.chunks: tuple[ManifestChunk, ...] = manifest.chunks
            self._layout_key: str | None = manifest.sha1_of_json()
        else:
            self.chunks = (ManifestChunk(0, size, sha1),)
            self._layout_key = None
        self.sha1 = sha1
        self.size = size
        self.data_path = temp_dir / f"partial-{sha1}.data"
        self.sidecar_path = temp_dir / f"partial-{sha1}.json"
        self._temp_dir = temp_dir
        self._install = install
        self._starts = [c.start for c in self.chunks]
        self._mutex = threading.Lock()
        self._state = "open"
        try:
            lock = _io.LockFile.try_acquire(temp_dir / f"partial-{sha1}.lock")
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"locking the download of {sha1}")) from exc
        if lock is None:
            raise StoreError(f"download of {sha1} already in progress")
        try:
            verified = self._load_sidecar()
            fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            lock.release()
            raise StoreError(_io.describe(exc, f"opening the download of {sha1}")) from exc
        self._handles = _Handles(fd, lock)
        self._finalizer = weakref.finalize(self, self._handles.close, False)
        try:
            if os.fstat(fd).st_size != size:
                verified = set()
                os.ftruncate(fd, size)
        except OSError as exc:
            self.close()
            raise StoreError(_io.describe(exc, f"preparing the download of {sha1}")) from exc
        self._verified = verified

    # -- reading state -------------------------------------------------------------------------

    def verified_chunks(self) -> set[int]:
        """Indexes of the chunks whose bytes on disk are known to be good."""
        with self._mutex:
            return set(self._verified)

    def _load_sidecar(self) -> set[int]:
        try:
            obj = json.loads(self.sidecar_path.read_bytes())
        except (OSError, ValueError):
            return set()
        if not isinstance(obj, dict) or (obj.get("sha1"), obj.get("size"), obj.get("manifest")) != (
            self.sha1, self.size, self._layout_key
        ):
            return set()
        indexes = obj.get("verified")
        if not isinstance(indexes, list):
            return set()
        count = len(self.chunks)
        return {i for i in indexes if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count}

    # -- writing -------------------------------------------------------------------------------

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes at ``offset``; chunks they overlap lose their verified mark."""
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise UsageError(
                f"write of {len(view)} bytes at {offset} is outside {self.sha1} ({self.size} bytes)"
            )
        fd = self._fd()
        try:
            _io.pwrite_all(fd, view, offset)
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"writing the download of {self.sha1}")) from exc
        if view and self._verified:
            first = bisect.bisect_right(self._starts, offset) - 1
            last = bisect.bisect_right(self._starts, offset + len(view) - 1) - 1
            with self._mutex:
                touched = self._verified.intersection(range(first, last + 1))
                if touched:
                    self._verified -= touched
                    self._persist_locked()

    def verify_chunk(self, index: int, persist: bool = True) -> bool:
        """Hash chunk ``index`` as it is on disk; mark it verified (and persist, unless ``persist`` is False:
        the caller finishes the file next, so a resume record is not worth two disk syncs) if it matches."""
        chunk = self._chunk(index)
        hasher = hashlib.sha1()
        fd = self._fd()
        try:
            for block in _io.iter_pread(fd, chunk.start, chunk.end):
                hasher.update(block)
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"reading back the download of {self.sha1}")) from exc
        good = hasher.hexdigest() == chunk.sha1
        with self._mutex:
            if good != (index in self._verified):
                if good:
                    self._verified.add(index)
                else:
                    self._verified.discard(index)
                if persist:
                    self._persist_locked()
        return good

    def mark_chunk_verified(self, index: int) -> None:
        """Record chunk ``index`` as good when the caller hashed its bytes while receiving them."""
        self._chunk(index)
        with self._mutex:
            if index not in self._verified:
                self._verified.add(index)
                self._persist_locked()

    def _persist_locked(self) -> None:
        """Write the sidecar atomically; the caller holds ``_mutex``."""
        body = json.dumps({"sha1": self.sha1, "size": self.size, "manifest": self._layout_key,
                           "verified": sorted(self._verified)}).encode()
        temp: _io.TempFile | None = None
        try:
            os.fdatasync(self._fd())  # the data the sidecar vouches for must be on disk first
            temp = _io.TempFile(self._temp_dir, f"partial-{self.sha1}.json")
            temp.write(body)
            temp.sync_and_close()
            os.replace(temp.path, self.sidecar_path)
        except OSError as exc:
            if temp is not None:
                temp.discard()
            raise StoreError(_io.describe(exc, f"saving the progress of {self.sha1}")) from exc

    # -- ending --------------------------------------------------------------------------------

    def finish(self) -> Path:
        """Verify the whole file against sha1 and move it into the store; the content path.

        On a mismatch the partial download is deleted and VerificationError raised.
        """
        fd = self._fd()
        hasher = hashlib.sha1()
        try:
            os.fsync(fd)
            for block in _io.iter_pread(fd, 0, self.size):
                hasher.update(block)
            os.fchmod(fd, 0o644)
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"finishing the download of {self.sha1}")) from exc
        got = hasher.hexdigest()
        if got != self.sha1:
            self.discard()
            raise VerificationError(f"downloaded data hashes to {got}, expected {self.sha1}; discarded it")
        with self._mutex:
            self._state = "finished"
        try:
            return self._install(self.data_path, self.sha1)
        finally:
            _io.remove_quietly(self.sidecar_path)
            self._release(remove_lock=True)

    def discard(self) -> None:
        """Delete the partial download and its progress (idempotent)."""
        with self._mutex:
            if self._state == "discarded":
                return
            self._state = "discarded"
        _io.remove_quietly(self.data_path)
        _io.remove_quietly(self.sidecar_path)
        self._release(remove_lock=True)

    def close(self) -> None:
        """Release the file and the lock but keep the data and progress for a later resume."""
        with self._mutex:
            if self._state == "open":
                self._state = "closed"
        self._release(remove_lock=False)

    def _release(self, remove_lock: bool) -> None:
        if self._finalizer.detach() is not None:
            self._handles.close(remove_lock)

    def _fd(self) -> int:
        if self._state != "open":
            raise UsageError(f"download of {self.sha1} is already {self._state}")
        return self._handles.fd

    def _chunk(self, index: int) -> ManifestChunk:
        if not 0 <= index < len(self.chunks):
            raise UsageError(f"no chunk {index} in {self.sha1} ({len(self.chunks)} chunks)")
        return self.chunks[index]

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
