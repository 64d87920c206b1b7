"""The local content store: a kachery storage directory (``$KACHERY_STORAGE_DIR``).

    store = ContentStore(Path("~/kachery-storage").expanduser())
    stored = store.store_file(Path("data.bin"))        # StoredFile(sha1, size, manifest_sha1, path)
    for block in store.read_range(stored.sha1, 0, 100):
        ...

``layout`` and ``manifest`` are pure; ``filestore`` does blocking I/O (call it from worker threads).
"""

from __future__ import annotations

from .blobwriter import BlobWriter
from .filestore import ContentStore, StoredFile
from .layout import CHUNK_SIZE, content_relpath, is_content_relpath
from .manifest import Manifest, ManifestBuilder, ManifestChunk
from .partial import PartialFile

__all__ = [
    "CHUNK_SIZE",
    "BlobWriter",
    "ContentStore",
    "Manifest",
    "ManifestBuilder",
    "ManifestChunk",
    "PartialFile",
    "StoredFile",
    "content_relpath",
    "is_content_relpath",
]
