"""ContentStore: the kachery storage directory, read and written compatibly with every kachery tool.

This is the only module that moves bytes into ``<root>/sha1/`` (``ContentStore._install``);
BlobWriter and PartialFile write temp files under ``<root>/tmp`` and hand them to it. Every write
is temp file -> fsync -> verify -> chmod 0644 -> ``os.replace``; content is never rewritten in
place, so readers never see partial files and concurrent writers of the same content (threads or
processes) all succeed with one content file. Blocking I/O only: call it from worker threads.

Foreign files (``*.hints.json``, ``*.lock``, ``*.link``, block-cache dirs, other tools' temps) are
left alone. ``<h>.link`` records (a file outside the store with a recorded size and mtime) are
honoured by ``find_local`` and ``read_range`` but not by ``has``/``size_of``, which report real
content files only.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

from ..errors import NotFoundError, StoreError, UsageError
from ..ids import FileUri
from . import _io
from .blobwriter import BlobWriter
from .layout import content_relpath
from .manifest import Manifest, ManifestBuilder
from .partial import PartialFile

__all__ = ["BlobWriter", "ContentStore", "PartialFile", "StoredFile"]

_PARTIAL_RE = re.compile(r"partial-([0-9a-f]{40})\.(data|json|lock)")
# Our own temp files (``_io.TempFile``): removed as soon as no writer holds their lock, whatever
# their age, since they can never be resumed (a kill -9 during a store leaves one behind).
_OWN_TEMP_RE = re.compile(r"(store|blob|partial-[0-9a-f]{40}\.json)-[a-z0-9_]+\.tmp")


@dataclass(frozen=True)
class StoredFile:
    """A file now in the store; ``manifest_sha1`` is set when a manifest was made (size > CHUNK_SIZE)."""

    sha1: str
    size: int
    manifest_sha1: str | None
    path: Path


class ContentStore:
    """A kachery storage directory (``$KACHERY_STORAGE_DIR``); ``root`` may be a symlink."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sha1_dir = self.root / "sha1"
        self.temp_dir = self.root / "tmp"
        for directory in (self.root, self.sha1_dir, self.temp_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(_io.describe(exc, f"creating the store directory {directory}")) from exc

    # -- lookups -------------------------------------------------------------------------------

    def content_path(self, sha1: str) -> Path:
        """Where the content of ``sha1`` lives (whether or not it is there); UsageError for a bad hash."""
        return self.root / content_relpath(sha1)

    def has(self, sha1: str) -> bool:
        """True when the content file of ``sha1`` exists (``.link`` records do not count; see find_local)."""
        return self.content_path(sha1).is_file()

    def size_of(self, sha1: str) -> int | None:
        """Size of the content file of ``sha1``, None when absent."""
        try:
            st = os.stat(self.content_path(sha1))
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def find_local(self, uri: FileUri) -> Path | None:
        """A local file with the URI's content: the content file, an md5 content file, or a linked file.

        ``sha1dir://`` URIs return None (the directory object must be resolved first); for a
        ``?chunkOf=`` URI only the chunk's own content file is looked for.
        """
        if uri.is_dir:
            return None
        path = self.root / content_relpath(uri.hash, uri.algorithm)
        if path.is_file():
            return path
        if uri.algorithm != "sha1":
            return None
        return _linked_file(path.with_name(path.name + ".link"))

    def read_range(self, sha1: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of a stored (or validly linked) file in blocks of at most 1 MiB.

        ``end`` is clamped to the size; UsageError when ``start < 0``, ``end < start`` or ``start``
        is beyond the end; NotFoundError when the content is not here. Checks happen at the call.
        """
        if start < 0 or end < start:
            raise UsageError(f"bad byte range [{start}, {end}) for {sha1}")
        content = self.content_path(sha1)
        path = content if content.is_file() else _linked_file(content.with_name(content.name + ".link"))
        if path is None:
            raise NotFoundError(f"{sha1.lower()} is not in the local store")
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise NotFoundError(f"{sha1.lower()} is not in the local store") from None
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"reading {path}")) from exc
        size = os.fstat(f.fileno()).st_size
        if start > size:
            f.close()
            raise UsageError(f"start {start} is beyond the end of {sha1.lower()} ({size} bytes)")
        return _iter_file(f, path, start, min(end, size))

    # -- storing -------------------------------------------------------------------------------

    def store_file(self, path: Path) -> StoredFile:
        """Copy a local file into the store in one pass (hash + manifest + write); idempotent."""
        source = Path(path)
        try:
            f = open_regular_file(source)
        except OSError as exc:
            raise StoreError(f"cannot read {source}: {exc.strerror or exc}") from exc
        with f:
            return self._store_blocks(_read_blocks(f, source), str(source))

    def store_bytes(self, data: bytes) -> StoredFile:
        """Add bytes to the store (with a manifest when larger than CHUNK_SIZE); idempotent."""
        view = memoryview(data).cast("B")
        blocks = (view[i : i + _io.BLOCK_SIZE] for i in range(0, len(view), _io.BLOCK_SIZE))
        return self._store_blocks(blocks, f"{len(view)} bytes")

    def open_blob_writer(self, expected_sha1: str, expected_size: int | None = None) -> BlobWriter:
        """A writer for one received blob, verified against sha1 (and size) before it is stored."""
        return BlobWriter(self.temp_dir, self._install, expected_sha1, expected_size)

    def open_partial(self, sha1: str, size: int, manifest: Manifest | None) -> PartialFile:
        """Start or resume a chunk-wise download; StoreError if one for sha1 is already open."""
        return PartialFile(self.temp_dir, self._install, sha1, size, manifest)

    def _store_blocks(self, blocks: Iterable[memoryview], what: str) -> StoredFile:
        builder = ManifestBuilder()
        try:
            temp = _io.TempFile(self.temp_dir, "store")
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"storing {what}")) from exc
        try:
            for block in blocks:
                builder.update(block)
                temp.write(block)
            temp.sync_and_close()
        except OSError as exc:
            temp.discard()
            raise StoreError(_io.describe(exc, f"storing {what}")) from exc
        except BaseException:
            temp.discard()
            raise
        sha1, manifest = builder.finish()
        path = self._install(temp.path, sha1)
        manifest_sha1 = None
        if manifest is not None:
            manifest_sha1 = self.store_bytes(manifest.to_json_bytes()).sha1
        return StoredFile(sha1=sha1, size=builder.size, manifest_sha1=manifest_sha1, path=path)

    def _install(self, temp: Path, sha1: str) -> Path:
        """Move a verified temp file to the content path of sha1 (keep an existing copy instead)."""
        final = self.content_path(sha1)
        try:
            if final.is_file():
                _io.remove_quietly(temp)
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(temp, 0o644)
            os.replace(temp, final)
        except OSError as exc:
            _io.remove_quietly(temp)
            raise StoreError(_io.describe(exc, f"moving {sha1} into the store")) from exc
        _io.fsync_dir(final.parent)
        return final

    # -- housekeeping --------------------------------------------------------------------------

    def cleanup_temp(self, max_age_sec: float, now: float | None = None) -> int:
        """Delete files in ``<root>/tmp`` not modified for ``max_age_sec``, and our own temp files no
        writer holds (whatever their age); how many were deleted.

        Sub-directories (other tools' temp dirs) are left alone, as is anything outside ``tmp``.
        A partial download counts as one unit: its files go together when all are stale and no
        PartialFile holds its lock.
        """
        cutoff = (time.time() if now is None else now) - max_age_sec
        try:
            entries = list(os.scandir(self.temp_dir))
        except FileNotFoundError:
            return 0
        removed = 0
        partials: dict[str, list[os.DirEntry[str]]] = defaultdict(list)
        for entry in entries:
            match = _PARTIAL_RE.fullmatch(entry.name)
            if match:
                partials[match.group(1)].append(entry)
            elif _OWN_TEMP_RE.fullmatch(entry.name) and _io.remove_if_abandoned(Path(entry.path)):
                removed += 1
            elif not entry.is_dir(follow_symlinks=False) and _mtime(entry) < cutoff:
                removed += _io.remove_quietly(Path(entry.path))
        for sha1, group in partials.items():
            removed += self._cleanup_partial(sha1, group, cutoff)
        return removed

    def _cleanup_partial(self, sha1: str, group: list[os.DirEntry[str]], cutoff: float) -> int:
        files = [e for e in group if not e.name.endswith(".lock")]
        if any(_mtime(e) >= cutoff for e in files):
            return 0
        lock_path = self.temp_dir / f"partial-{sha1}.lock"
        try:
            lock = _io.LockFile.try_acquire(lock_path)
        except OSError:
            return 0
        if lock is None:  # a download is using it right now
            return 0
        removed = sum(_io.remove_quietly(Path(e.path)) for e in files)
        lock.release(remove=True)
        return removed + (len(group) - len(files))


def open_regular_file(path: Path) -> FileIO:
    """Open a regular file for reading without ever blocking on a FIFO or device: opened with
    O_NONBLOCK (a FIFO without writer would block a plain open forever) and checked on the open
    descriptor, so a path swapped to a FIFO after an earlier check is refused too. OSError
    (EINVAL "not a regular file") otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return float("inf")


def _read_blocks(f: FileIO, source: Path) -> Iterator[memoryview]:
    """1 MiB blocks read into one reusable buffer (each view is valid until the next one)."""
    buffer = bytearray(_io.BLOCK_SIZE)
    view = memoryview(buffer)
    while True:
        try:
            n = f.readinto(view)
        except OSError as exc:
            raise StoreError(f"cannot read {source}: {exc.strerror or exc}") from exc
        if not n:
            return
        yield view[:n]


def _iter_file(f: FileIO, path: Path, start: int, end: int) -> Iterator[bytes]:
    with f:
        try:
            yield from _io.iter_pread(f.fileno(), start, end)
        except OSError as exc:
            raise StoreError(_io.describe(exc, f"reading {path}")) from exc


def _linked_file(link_path: Path) -> Path | None:
    """The target of a ``<h>.link`` record if it still has exactly the recorded size and mtime.

    Both the Python form (``manifest_hash``) and the daemon form (``manifestSha1``) carry
    ``{"path": ..., "stat": {"size": ..., "mtime": ...}}``, which is all this needs.
    """
    try:
        link = json.loads(link_path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(link, dict) or not isinstance(link.get("path"), str):
        return None
    recorded = link.get("stat")
    if not isinstance(recorded, dict):
        return None
    size, mtime = recorded.get("size"), recorded.get("mtime")
    if isinstance(size, bool) or not isinstance(size, int) or isinstance(mtime, bool):
        return None
    if not isinstance(mtime, (int, float)):
        return None
    target = Path(link["path"])
    try:
        st = os.stat(target)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime == mtime:
        return target
    return None
