"""Linked files larger than one chunk: the manifest is stored, every chunk is verified on its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kachery_p2p.errors import NotFoundError, StoreError, UsageError, VerificationError
from kachery_p2p.store import CHUNK_SIZE, ContentStore, Manifest
from kachery_p2p.store.links import LinkedChunks, link_file, link_path_for


def test_big_linked_file_chunks_verified_separately(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    source = tmp_path / "big.bin"
    data = bytearray(os.urandom(4096) * (CHUNK_SIZE // 4096 + 2))
    source.write_bytes(data)
    linked = link_file(store, source)
    assert linked.size == len(data) and linked.manifest_sha1 is not None
    record = json.loads(link_path_for(store, linked.sha1).read_text())
    assert record["manifestSha1"] == linked.manifest_sha1 and record["_writingProcess"] == "daemon"
    manifest = Manifest.parse(store.content_path(linked.manifest_sha1).read_bytes(), expected_sha1=linked.sha1)
    assert [c.size for c in manifest.chunks] == [CHUNK_SIZE, len(data) - CHUNK_SIZE]
    chunks = LinkedChunks(store)
    across = b"".join(chunks.read_range(linked.sha1, CHUNK_SIZE - 10, CHUNK_SIZE + 10))
    assert across == bytes(data[CHUNK_SIZE - 10 : CHUNK_SIZE + 10])
    # Change a byte of the second chunk, keeping size and mtime: the first chunk is still served,
    # nothing of the second is.
    st = source.stat()
    with open(source, "r+b") as handle:
        handle.seek(CHUNK_SIZE + 5)
        handle.write(bytes([data[CHUNK_SIZE + 5] ^ 0xFF]))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh = LinkedChunks(store)
    assert b"".join(fresh.read_range(linked.sha1, 0, 100)) == bytes(data[:100])
    # A changed mtime: the link is not honoured at all.
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(NotFoundError):
        list(LinkedChunks(store).read_range(linked.sha1, 0, 100))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    # A chunk that no longer hashes right: refused, and the stale link record is removed.
    with pytest.raises(VerificationError):
        list(fresh.read_range(linked.sha1, CHUNK_SIZE, CHUNK_SIZE + 100))
    assert not link_path_for(store, linked.sha1).exists()
    with pytest.raises(NotFoundError):
        list(fresh.read_range(linked.sha1, 0, 100))


def test_link_refuses_directories_and_missing_files(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    with pytest.raises(StoreError):
        link_file(store, tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        link_file(store, tmp_path / "missing")
