"""kachery_p2p.store.partial: resumable, chunk-verified downloads."""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from kachery_p2p.errors import StoreError, UsageError, VerificationError
from kachery_p2p.store import ContentStore, Manifest, ManifestChunk

DATA = bytes((i * 7 + i // 256) % 256 for i in range(3000))
SHA1 = hashlib.sha1(DATA).hexdigest()
EMPTY = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def small_manifest(data: bytes = DATA, chunk: int = 1000) -> Manifest:
    chunks = tuple(
        ManifestChunk(i, min(i + chunk, len(data)), hashlib.sha1(data[i : i + chunk]).hexdigest())
        for i in range(0, len(data), chunk)
    )
    return Manifest(size=len(data), sha1=hashlib.sha1(data).hexdigest(), chunks=chunks)


MANIFEST = small_manifest()


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


def temp_files(store: ContentStore) -> list[str]:
    return sorted(os.listdir(store.temp_dir))


def write_chunk(partial: object, index: int, data: bytes = DATA) -> None:
    chunk = MANIFEST.chunks[index]
    partial.write_at(chunk.start, data[chunk.start : chunk.end])  # type: ignore[attr-defined]


def test_out_of_order_chunks_resume_after_crash(store: ContentStore) -> None:
    partial = store.open_partial(SHA1, len(DATA), MANIFEST)
    assert partial.verified_chunks() == set()
    assert partial.data_path.stat().st_size == len(DATA)  # preallocated (sparse)
    write_chunk(partial, 2)
    write_chunk(partial, 0)
    assert partial.verify_chunk(2) is True
    assert partial.verify_chunk(0) is True
    assert partial.verify_chunk(1) is False  # still zeros
    assert partial.verified_chunks() == {0, 2}
    del partial  # "crash": no finish, no close
    gc.collect()

    partial = store.open_partial(SHA1, len(DATA), MANIFEST)
    assert partial.verified_chunks() == {0, 2}
    partial.write_at(1000, DATA[1000:1500])
    partial.write_at(1500, memoryview(DATA)[1500:2000])
    partial.mark_chunk_verified(1)
    assert partial.verified_chunks() == {0, 1, 2}
    path = partial.finish()
    assert path == store.content_path(SHA1) and path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert temp_files(store) == []
    with pytest.raises(UsageError):
        partial.write_at(0, b"x")


def _verify_two_chunks_then_die(root: str) -> None:
    partial = ContentStore(Path(root)).open_partial(SHA1, len(DATA), MANIFEST)
    write_chunk(partial, 0)
    write_chunk(partial, 2)
    partial.verify_chunk(0)
    partial.verify_chunk(2)
    os._exit(3)


def test_verified_chunks_survive_a_killed_process(store: ContentStore) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=_verify_two_chunks_then_die, args=(str(store.root),))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 3
    with store.open_partial(SHA1, len(DATA), MANIFEST) as partial:
        assert partial.verified_chunks() == {0, 2}
        write_chunk(partial, 1)
        assert partial.verify_chunk(1)
        assert partial.finish().read_bytes() == DATA


def test_wrong_bytes_fail_verification(store: ContentStore) -> None:
    with store.open_partial(SHA1, len(DATA), MANIFEST) as partial:
        partial.write_at(1000, b"\xff" * 1000)
        assert partial.verify_chunk(1) is False
        assert partial.verified_chunks() == set()
        write_chunk(partial, 1)
        assert partial.verify_chunk(1) is True
        partial.write_at(1500, b"\x00")  # overwriting a verified chunk drops its mark
        assert partial.verified_chunks() == set()
        assert json.loads(partial.sidecar_path.read_text())["verified"] == []


def test_finish_with_corrupt_region_deletes_everything(store: ContentStore) -> None:
    partial = store.open_partial(SHA1, len(DATA), MANIFEST)
    write_chunk(partial, 0)
    write_chunk(partial, 2)
    partial.write_at(1000, DATA[1000:1999] + b"\x00")  # one bad byte, never verified
    partial.mark_chunk_verified(0)
    with pytest.raises(VerificationError, match="expected " + SHA1):
        partial.finish()
    assert not store.has(SHA1)
    assert not store.content_path(SHA1).exists()
    assert temp_files(store) == []
    with store.open_partial(SHA1, len(DATA), MANIFEST) as again:  # lock released
        assert again.verified_chunks() == set()


def test_single_chunk_without_manifest(store: ContentStore) -> None:
    with store.open_partial(SHA1.upper(), len(DATA), None) as partial:
        assert partial.chunks == (ManifestChunk(0, len(DATA), SHA1),)
        partial.write_at(0, DATA[:10])
        assert partial.verify_chunk(0) is False
        partial.write_at(10, DATA[10:])
        assert partial.verify_chunk(0) is True
        assert partial.finish().read_bytes() == DATA


def test_empty_file(store: ContentStore) -> None:
    partial = store.open_partial(EMPTY, 0, None)
    assert partial.verify_chunk(0) is True
    assert partial.finish() == store.content_path(EMPTY)
    assert store.has(EMPTY) and store.size_of(EMPTY) == 0
    assert temp_files(store) == []


def test_one_download_per_sha1(store: ContentStore) -> None:
    first = store.open_partial(SHA1, len(DATA), MANIFEST)
    with pytest.raises(StoreError, match=f"download of {SHA1} already in progress"):
        store.open_partial(SHA1, len(DATA), None)
    other = store.open_partial(EMPTY, 0, None)  # other hashes are independent
    other.discard()
    first.close()
    store.open_partial(SHA1, len(DATA), MANIFEST).discard()
    assert temp_files(store) == []


def _hold_partial(root: str, ready: object, release: object) -> None:
    partial = ContentStore(Path(root)).open_partial(SHA1, len(DATA), MANIFEST)
    ready.set()  # type: ignore[attr-defined]
    release.wait(60)  # type: ignore[attr-defined]
    partial.close()


def test_one_download_per_sha1_across_processes(store: ContentStore) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_partial, args=(str(store.root), ready, release))
    proc.start()
    try:
        assert ready.wait(120)
        with pytest.raises(StoreError, match="already in progress"):
            store.open_partial(SHA1, len(DATA), MANIFEST)
    finally:
        release.set()
        proc.join(120)
    assert proc.exitcode == 0
    store.open_partial(SHA1, len(DATA), MANIFEST).discard()


def test_progress_is_dropped_when_layout_differs(store: ContentStore) -> None:
    with store.open_partial(SHA1, len(DATA), MANIFEST) as partial:
        write_chunk(partial, 0)
        assert partial.verify_chunk(0)
    with store.open_partial(SHA1, len(DATA), small_manifest(chunk=1500)) as partial:
        assert partial.verified_chunks() == set()  # another chunk layout: start over
    with store.open_partial(SHA1, len(DATA), None) as partial:
        assert partial.verified_chunks() == set()
    with store.open_partial(SHA1, len(DATA), MANIFEST) as partial:
        assert partial.verified_chunks() == {0}  # nothing was re-verified meanwhile
    sidecar = store.temp_dir / f"partial-{SHA1}.json"
    sidecar.write_text("{broken")
    with store.open_partial(SHA1, len(DATA), MANIFEST) as partial:
        assert partial.verified_chunks() == set()
        assert partial.verify_chunk(0)  # the bytes are still there and can be re-checked
    os.truncate(store.temp_dir / f"partial-{SHA1}.data", 10)  # data damaged behind our back
    with store.open_partial(SHA1, len(DATA), MANIFEST) as partial:
        assert partial.verified_chunks() == set()
        assert partial.data_path.stat().st_size == len(DATA)


def test_manifest_must_match(store: ContentStore) -> None:
    with pytest.raises(VerificationError):
        store.open_partial(SHA1, len(DATA) + 1, MANIFEST)
    with pytest.raises(VerificationError):
        store.open_partial(EMPTY, len(DATA), MANIFEST)
    assert temp_files(store) == []


def test_bad_arguments(store: ContentStore) -> None:
    with pytest.raises(UsageError):
        store.open_partial("nothex", 1, None)
    with store.open_partial(SHA1, len(DATA), MANIFEST) as partial:
        with pytest.raises(UsageError):
            partial.write_at(len(DATA) - 1, b"ab")
        with pytest.raises(UsageError):
            partial.write_at(-1, b"a")
        with pytest.raises(UsageError):
            partial.verify_chunk(3)
        with pytest.raises(UsageError):
            partial.mark_chunk_verified(-1)


def test_finish_when_content_already_stored(store: ContentStore) -> None:
    partial = store.open_partial(SHA1, len(DATA), None)
    partial.write_at(0, DATA)
    existing = store.store_bytes(DATA)
    mtime = existing.path.stat().st_mtime_ns
    assert partial.finish() == existing.path
    assert existing.path.stat().st_mtime_ns == mtime
    assert temp_files(store) == []


def test_cleanup_temp_spares_active_downloads(store: ContentStore) -> None:
    later = time.time() + 10 * 86400
    partial = store.open_partial(SHA1, len(DATA), MANIFEST)
    write_chunk(partial, 0)
    partial.mark_chunk_verified(0)
    assert store.cleanup_temp(60, now=later) == 0  # locked: in use
    assert {f"partial-{SHA1}.data", f"partial-{SHA1}.json"} <= set(temp_files(store))
    partial.close()
    assert store.cleanup_temp(60) == 0  # not locked but recent: kept for resume
    assert store.cleanup_temp(60, now=later) == 3  # data, sidecar, lock
    assert temp_files(store) == []
