"""What a store holds, how much disk it takes, and removing one file (with its manifest) from it.

Blocking I/O: call from worker threads. Content files are ``sha1/aa/bb/cc/<h>``; ``<h>.link`` records
point at files outside the store ("linked"). A stored blob that is the manifest of another file the
store holds is not listed on its own: it shows as that file's ``?manifest=`` and goes with it on removal.
Foreign files (hints, locks, other tools' temps) are never listed or touched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..ids import FileUri
from . import _io
from .filestore import ContentStore, _linked_file
from .layout import is_content_relpath
from .manifest import Manifest

# Manifests are small: 80,000 chunks (a 1.6 TB file) fit in 8 MiB.
MAX_MANIFEST_SCAN = 8 * 1024 * 1024
_MANIFEST_START = b'{"size":'


@dataclass(frozen=True)
class StoreEntry:
    sha1: str
    size: int
    kind: str  # "stored" or "linked"
    path: Path  # the content file, or the linked file outside the store
    modified: float
    accessed: float | None
    manifest_sha1: str | None = None

    @property
    def uri(self) -> str:
        return str(FileUri(algorithm="sha1", hash=self.sha1, manifest=self.manifest_sha1))

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "sha1": self.sha1,
            "size": self.size,
            "kind": self.kind,
            "path": str(self.path),
            "modified": self.modified,
            "accessed": self.accessed,
            "manifestSha1": self.manifest_sha1,
        }


def _walk(store: ContentStore) -> tuple[dict[str, os.stat_result], dict[str, Path]]:
    """Content files (sha1 -> stat) and link records (sha1 -> record path) under ``sha1/``."""
    content: dict[str, os.stat_result] = {}
    links: dict[str, Path] = {}
    for top in _scan(store.sha1_dir):
        for mid in _scan(top):
            for low in _scan(mid):
                for entry in _files(low):
                    name = entry.name
                    if name.endswith(".link"):
                        sha1 = name[: -len(".link")]
                        if is_content_relpath(f"sha1/{top.name}/{mid.name}/{low.name}/{sha1}"):
                            links[sha1] = Path(entry.path)
                    elif is_content_relpath(f"sha1/{top.name}/{mid.name}/{low.name}/{name}"):
                        try:
                            content[name] = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
    return content, links


def _scan(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as it:
            return [Path(e.path) for e in it if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _files(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return [e for e in it if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _manifests(store: ContentStore, content: dict[str, os.stat_result]) -> dict[str, str]:
    """file sha1 -> sha1 of its manifest blob, for the manifests this store holds."""
    found: dict[str, str] = {}
    for sha1, st in content.items():
        if st.st_size > MAX_MANIFEST_SCAN or st.st_size < len(_MANIFEST_START):
            continue
        path = store.content_path(sha1)
        try:
            with open(path, "rb") as handle:
                if handle.read(len(_MANIFEST_START)) != _MANIFEST_START:
                    continue
                data = _MANIFEST_START + handle.read()
            manifest = Manifest.parse(data)
        except (OSError, ValueError, StoreError):
            continue
        found.setdefault(manifest.sha1, sha1)
    return found


def list_store(store: ContentStore) -> list[StoreEntry]:
    """Every file the store holds or links to, newest first (manifests shown with their files)."""
    content, links = _walk(store)
    manifests = _manifests(store, content)
    present = set(content) | set(links)
    hidden = {m for f, m in manifests.items() if f in present and f != m}
    entries: list[StoreEntry] = []
    for sha1, st in content.items():
        if sha1 in hidden:
            continue
        entries.append(
            StoreEntry(sha1, st.st_size, "stored", store.content_path(sha1), st.st_mtime, st.st_atime,
                       manifests.get(sha1))
        )
    for sha1, record in links.items():
        if sha1 in content:
            continue
        target = _linked_file(record)
        if target is None:
            continue  # the linked file changed or is gone: it is not served, so not listed
        try:
            st = os.stat(target)
        except OSError:
            continue
        entries.append(StoreEntry(sha1, st.st_size, "linked", target, st.st_mtime, st.st_atime, manifests.get(sha1)))
    entries.sort(key=lambda e: (-e.modified, e.sha1))
    return entries


def store_usage(store: ContentStore) -> dict[str, Any]:
    """Counts and bytes: stored content, linked files, manifests, partial downloads; free disk space."""
    content, links = _walk(store)
    manifests = _manifests(store, content)
    present = set(content) | set(links)
    manifest_blobs = {m for f, m in manifests.items() if f in present and f != m}
    files = [s for s in content if s not in manifest_blobs]
    linked = [t for s, r in links.items() if s not in content and (t := _linked_file(r)) is not None]
    temp_bytes = 0
    for entry in _files(store.temp_dir):
        try:
            temp_bytes += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    try:
        disk = shutil.disk_usage(store.root)
        free: int | None = disk.free
    except OSError:
        free = None
    return {
        "root": str(store.root),
        "files": len(files) + len(linked),
        "storedFiles": len(files),
        "storedBytes": sum(content[s].st_size for s in files),
        "diskBytes": sum(st.st_blocks * 512 for st in content.values()),
        "linkedFiles": len(linked),
        "linkedBytes": sum(_size(t) for t in linked),
        "manifests": len(manifest_blobs),
        "manifestBytes": sum(content[m].st_size for m in manifest_blobs),
        "tempBytes": temp_bytes,
        "freeBytes": free,
    }


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def remove_file(store: ContentStore, sha1: str) -> list[str]:
    """Remove ``sha1`` from this store: its content file, its ``.link`` record and its manifest blob.

    Files outside the store that a link points to are left alone. Returns what was removed (empty
    when the store did not have it)."""
    content_path = store.content_path(sha1)
    sha1 = content_path.name
    removed: list[str] = []
    manifest_sha1: str | None = None
    content, _links = _walk(store)
    if content:
        manifest_sha1 = _manifests(store, content).get(sha1)
    for path, what in ((content_path, "content"), (content_path.with_name(f"{sha1}.link"), "link")):
        if _io.remove_quietly(path):
            removed.append(what)
        elif path.exists():
            raise StoreError(f"cannot remove {path}")
    manifest_removed = removed and manifest_sha1 not in (None, sha1)
    if manifest_removed and manifest_sha1 and _io.remove_quietly(store.content_path(manifest_sha1)):
        removed.append("manifest")
    return removed
