"""Loads that never touch the peer network: ``p2p=False``, ``_experimental_config(nop2p=True)`` and
offline mode (``KACHERY_OFFLINE_STORAGE_DIR``: no daemon at all, the store is read and written here).

Offline stores go through ``kachery_p2p.store.ContentStore``, the daemon's own code, so URIs and
manifests are byte-identical to the daemon's. Local lookups read the store without writing to it
(the store may belong to the daemon's user and be read-only for us).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NotFoundError, UsageError
from ..ids import SHA1_EMPTY, FileUri
from ..store.layout import content_relpath

if TYPE_CHECKING:  # the store's writer and links load only when offline mode or a link needs them
    from ..store import ContentStore

OFFLINE_ENV = "KACHERY_OFFLINE_STORAGE_DIR"


class _Settings:
    """What ``_experimental_config`` set (a plain class: a dataclass cost every command start-up time)."""

    __slots__ = ("file_server_urls", "nop2p")

    def __init__(self) -> None:
        self.nop2p = False
        self.file_server_urls: tuple[str, ...] = ()


settings = _Settings()


def experimental_config(nop2p: bool | None = None, file_server_urls: list[str] | None = None) -> None:
    """The original's ``_experimental_config``: ``nop2p=True`` makes every load local-only and
    ``find_file`` report only this node. ``file_server_urls`` is accepted and kept, but unused."""
    if nop2p is not None:
        settings.nop2p = bool(nop2p)
    if file_server_urls is not None:
        settings.file_server_urls = tuple(str(u) for u in file_server_urls)


def offline_root() -> Path | None:
    """The offline storage dir when offline mode is on (it takes precedence over any daemon)."""
    value = os.environ.get(OFFLINE_ENV)
    return Path(value).expanduser() if value else None


def offline_store() -> ContentStore | None:
    root = offline_root()
    if root is None:
        return None
    from ..store import ContentStore

    return ContentStore(root)


def find_in(root: Path, uri: FileUri) -> Path | None:
    """A local file with the URI's content in the store at ``root`` (content file or valid link)."""
    if uri.is_dir:
        raise UsageError("resolve sha1dir:// URIs before looking them up")
    path = root / content_relpath(uri.hash, uri.algorithm)
    if path.is_file():
        return path
    if uri.algorithm != "sha1":
        return None
    from ..store.links import linked_target

    return linked_target(path.with_name(path.name + ".link"))


def find_or_make_offline(store: ContentStore, uri: FileUri) -> Path:
    """Offline lookup of a file or of a ``?chunkOf=`` chunk (cut from its local parent); NotFoundError."""
    path = find_in(store.root, uri)
    if path is not None:
        return path
    if uri.algorithm == "sha1" and uri.hash == SHA1_EMPTY:
        return store.store_bytes(b"").path
    if uri.chunk_of is not None and find_in(store.root, FileUri("sha1", uri.chunk_of.sha1)) is not None:
        return extract_chunk(store, uri)
    raise NotFoundError(f"{uri.hash} is not in the local store {store.root}")


def extract_chunk(store: ContentStore, uri: FileUri) -> Path:
    """Store bytes [start, end) of the parent under the chunk's own hash (verified before it is stored)."""
    assert uri.chunk_of is not None
    chunk = uri.chunk_of
    with store.open_blob_writer(uri.hash, chunk.end - chunk.start) as writer:
        for block in store.read_range(chunk.sha1, chunk.start, chunk.end):
            writer.write(block)
        return writer.commit()


def read_local(path: Path, start: int | None, end: int | None) -> bytes:
    """Bytes [start, end) of a local file, end exclusive and clamped to the size."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        first = start or 0
        last = size if end is None else min(end, size)
        if first > last:
            raise UsageError(f"bad range: start {first} is after end {last} (file size {size})")
        handle.seek(first)
        return handle.read(last - first)


def local_provider(node_id: str, path: Path, uri: FileUri) -> Iterator[dict[str, object]]:
    size = path.stat().st_size
    yield {"node_id": node_id, "label": "", "size": size, "local": True, "nodeId": node_id,
           "fileSize": size, "fileKey": {"sha1": uri.hash}}
