"""Linked files: content that stays where it lies, recorded in the store as ``<h>.link``.

The record is the original kachery-p2p daemon's format (reference/storage-compat.md 1.4)::

    sha1/ab/cd/ef/<h>.link = {"path": <abs path>, "manifestSha1": <m>|null,
                              "stat": {"size": <int>, "mtime": <float>}, "_writingProcess": "daemon"}

so the original's tools find the file too. A link is honoured only while the target still has the
recorded size and mtime (``linked_target``); serving also re-hashes every chunk it sends
(``LinkedChunks``), so a file changed in place behind an unchanged size and mtime is still refused.
Blocking I/O only.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, StoreError, UsageError, VerificationError
from . import _io
from .filestore import ContentStore
from .filestore import _linked_file as linked_target
from .layout import CHUNK_SIZE
from .manifest import Manifest, ManifestBuilder, ManifestChunk

__all__ = ["LinkedChunks", "LinkedFile", "link_file", "linked_target", "read_link"]


@dataclass(frozen=True)
class LinkedFile:
    sha1: str
    size: int
    manifest_sha1: str | None
    path: Path


def link_path_for(store: ContentStore, sha1: str) -> Path:
    content = store.content_path(sha1)
    return content.with_name(content.name + ".link")


def read_link(link_path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(link_path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def link_file(store: ContentStore, path: Path, writer: str = "daemon") -> LinkedFile:
    """Hash ``path`` where it lies and record it as ``<h>.link`` (a manifest is stored for big files).

    StoreError when the file cannot be read or changes while it is being hashed.
    """
    source = Path(path).expanduser().absolute()
    try:
        handle = open(source, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise UsageError(f"cannot link {path}: no such file") from None
    except OSError as exc:
        raise StoreError(f"cannot read {source}: {exc.strerror or exc}") from exc
    with handle:
        before = os.fstat(handle.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise UsageError(f"cannot link {path}: not a regular file")
        builder = ManifestBuilder()
        try:
            while block := handle.read(_io.BLOCK_SIZE):
                builder.update(block)
        except OSError as exc:
            raise StoreError(f"cannot read {source}: {exc.strerror or exc}") from exc
    after = os.stat(source)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or builder.size != after.st_size:
        raise StoreError(f"{source} changed while it was being hashed; link it again when it is stable")
    sha1, manifest = builder.finish()
    manifest_sha1 = store.store_bytes(manifest.to_json_bytes()).sha1 if manifest is not None else None
    record = {
        "path": str(source),
        "manifestSha1": manifest_sha1,
        "stat": {"size": after.st_size, "mtime": after.st_mtime},
        "_writingProcess": writer,
    }
    _write_atomically(link_path_for(store, sha1), json.dumps(record).encode("utf-8"))
    return LinkedFile(sha1=sha1, size=after.st_size, manifest_sha1=manifest_sha1, path=source)


def _write_atomically(final: Path, data: bytes) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = _io.TempFile(final.parent, final.name)
    except OSError as exc:
        raise StoreError(_io.describe(exc, f"writing {final}")) from exc
    try:
        temp.write(data)
        temp.sync_and_close()
        os.chmod(temp.path, 0o644)
        os.replace(temp.path, final)
    except OSError as exc:
        temp.discard()
        raise StoreError(_io.describe(exc, f"writing {final}")) from exc


class LinkedChunks:
    """Bytes of linked files, each chunk re-hashed against the manifest before any of it is handed out.

    Verified chunks are kept in a small LRU (``max_chunks`` of at most CHUNK_SIZE bytes each), so a
    peer fetching a chunk in 4 MiB pieces costs one read of it.
    """

    def __init__(self, store: ContentStore, max_chunks: int = 3) -> None:
        self.store = store
        self._chunks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._max_chunks = max_chunks

    def read_range(self, sha1: str, start: int, end: int) -> Iterator[bytes]:
        """Verified bytes ``[start, end)`` of the linked file of ``sha1``, one piece per chunk.

        NotFoundError when there is no valid link; VerificationError when the file's content no
        longer matches (nothing of that chunk is returned).
        """
        sha1 = sha1.lower()
        target = linked_target(link_path_for(self.store, sha1))
        if target is None:
            raise NotFoundError(f"{sha1} is not linked here (or its file changed)")
        manifest = self._manifest(sha1, target)
        if end > manifest.size or start > end:
            raise UsageError(f"bad byte range [{start}, {end}) for {sha1} ({manifest.size} bytes)")
        for index in manifest.chunks_covering(start, end):
            chunk = manifest.chunks[index]
            data = self._chunk(sha1, target, chunk)
            yield data[max(start, chunk.start) - chunk.start : min(end, chunk.end) - chunk.start]

    def _chunk(self, sha1: str, target: Path, chunk: ManifestChunk) -> bytes:
        key = (sha1, chunk.start)
        data = self._chunks.get(key)
        if data is not None:
            self._chunks.move_to_end(key)
            return data
        try:
            with open(target, "rb") as handle:
                handle.seek(chunk.start)
                data = handle.read(chunk.size)
        except OSError as exc:
            raise NotFoundError(f"cannot read linked file {target}: {exc.strerror or exc}") from None
        if len(data) != chunk.size or hashlib.sha1(data).hexdigest() != chunk.sha1:
            self._manifests.pop(sha1, None)
            # The content is gone for good: drop the record, so the file is no longer offered at all.
            _io.remove_quietly(link_path_for(self.store, sha1))
            raise VerificationError(
                f"linked file {target} no longer matches {sha1}; its link is removed (link it again to share it)"
            )
        self._chunks[key] = data
        while len(self._chunks) > self._max_chunks:
            self._chunks.popitem(last=False)
        return data

    def _manifest(self, sha1: str, target: Path) -> Manifest:
        cached = self._manifests.get(sha1)
        if cached is not None:
            return cached
        size = target.stat().st_size
        manifest: Manifest | None = None
        if size <= CHUNK_SIZE:
            manifest = Manifest(size=size, sha1=sha1, chunks=(ManifestChunk(0, size, sha1),) if size else ())
        else:
            record = read_link(link_path_for(self.store, sha1)) or {}
            manifest_sha1 = record.get("manifestSha1") or record.get("manifest_hash")
            if isinstance(manifest_sha1, str) and self.store.has(manifest_sha1):
                data = self.store.content_path(manifest_sha1).read_bytes()
                manifest = Manifest.parse(data, expected_sha1=sha1, expected_manifest_sha1=manifest_sha1)
            else:
                manifest = _hash_manifest(target, sha1)
        self._manifests[sha1] = manifest
        while len(self._manifests) > 64:
            self._manifests.popitem(last=False)
        return manifest


def _hash_manifest(target: Path, sha1: str) -> Manifest:
    """A manifest for a link recorded without one (hashing the whole file once)."""
    builder = ManifestBuilder()
    with open(target, "rb") as handle:
        while block := handle.read(_io.BLOCK_SIZE):
            builder.update(block)
    whole, manifest = builder.finish()
    if whole != sha1 or manifest is None:
        raise VerificationError(f"linked file {target} no longer matches {sha1}; not serving it")
    return manifest
