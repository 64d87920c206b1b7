"""The local content store: a kachery storage directory (``$KACHERY_STORAGE_DIR``).

    store = ContentStore(Path("~/kachery-storage").expanduser())
    stored = store.store_file(Path("data.bin"))        # StoredFile(sha1, size, manifest_sha1, path)
    for block in store.read_range(stored.sha1, 0, 100):
        ...

``layout`` and ``manifest`` are pure; ``filestore`` does blocking I/O (call it from worker threads).
"""

from __future__ import annotations

# Names are imported when first used (PEP 562): a client that needs only ``layout`` (where a file
# lives) does not load the writer, the partial files and their I/O helpers.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .blobwriter import BlobWriter
    from .filestore import ContentStore, StoredFile
    from .layout import CHUNK_SIZE, content_relpath, is_content_relpath
    from .manifest import Manifest, ManifestBuilder, ManifestChunk
    from .partial import PartialFile

_LAZY = {
    "BlobWriter": ".blobwriter",
    "ContentStore": ".filestore",
    "StoredFile": ".filestore",
    "CHUNK_SIZE": ".layout",
    "content_relpath": ".layout",
    "is_content_relpath": ".layout",
    "Manifest": ".manifest",
    "ManifestBuilder": ".manifest",
    "ManifestChunk": ".manifest",
    "PartialFile": ".partial",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


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
