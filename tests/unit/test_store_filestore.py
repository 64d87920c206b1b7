"""kachery_p2p.store.filestore: storing, finding, reading, failure handling, foreign stores."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kachery_p2p.errors import NotFoundError, StoreError, UsageError, VerificationError
from kachery_p2p.ids import FileUri, format_store_uri
from kachery_p2p.store import ContentStore, content_relpath, filestore, is_content_relpath
from kachery_p2p.store import _io as store_io

PATTERN = bytes(range(256)) * 4096  # 1 MiB
EMPTY = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


def write_pattern(path: Path, size: int) -> str:
    """Write ``size`` bytes of PATTERN repeated; its sha1."""
    hasher = hashlib.sha1()
    with open(path, "wb") as f:
        left = size
        while left:
            block = PATTERN[: min(left, len(PATTERN))]
            f.write(block)
            hasher.update(block)
            left -= len(block)
    return hasher.hexdigest()


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def content_files(store: ContentStore) -> list[str]:
    return [p for p in all_files(store.root) if is_content_relpath(p)]


def temp_files(store: ContentStore) -> list[str]:
    return sorted(os.listdir(store.temp_dir))


# -- basics -------------------------------------------------------------------------------------


def test_creates_layout(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "a" / "b")
    assert store.root == tmp_path / "a" / "b"
    assert store.temp_dir == store.root / "tmp"
    assert (store.root / "sha1").is_dir() and store.temp_dir.is_dir()


def test_root_may_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    store = ContentStore(tmp_path / "link")
    stored = store.store_bytes(b"via symlink")
    assert (tmp_path / "real" / content_relpath(stored.sha1)).read_bytes() == b"via symlink"


def test_root_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StoreError):
        ContentStore(tmp_path / "f")


def test_store_file_matches_hashlib_and_uri(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "small.txt"
    src.write_bytes(b"hello\n")
    stored = store.store_file(src)
    expected = hashlib.sha1(b"hello\n").hexdigest()
    assert (stored.sha1, stored.size, stored.manifest_sha1) == (expected, 6, None)
    assert stored.path == store.root / "sha1" / expected[:2] / expected[2:4] / expected[4:6] / expected
    assert stored.path.read_bytes() == b"hello\n"
    assert format_store_uri(stored.sha1, src.name, stored.manifest_sha1) == f"sha1://{expected}/small.txt"
    assert store.has(expected) and store.has(expected.upper())
    assert store.size_of(expected) == 6
    assert temp_files(store) == []


def test_store_is_idempotent(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    sha1 = write_pattern(src, 3 * len(PATTERN) + 5)
    first = store.store_file(src)
    mtime = first.path.stat().st_mtime_ns
    second = store.store_file(src)
    third = store.store_bytes(src.read_bytes())
    assert first == second == third
    assert first.sha1 == sha1
    assert first.path.stat().st_mtime_ns == mtime  # the existing copy was kept, not rewritten
    assert content_files(store) == [content_relpath(sha1)]
    assert temp_files(store) == []


def test_file_mode_is_0644_whatever_the_umask(store: ContentStore) -> None:
    old = os.umask(0o077)
    try:
        stored = store.store_bytes(b"mode")
    finally:
        os.umask(old)
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o644


def test_empty_file_everywhere(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.write_bytes(b"")
    stored = store.store_file(src)
    assert (stored.sha1, stored.size, stored.manifest_sha1) == (EMPTY, 0, None)
    assert store.has(EMPTY) and store.size_of(EMPTY) == 0
    assert list(store.read_range(EMPTY, 0, 0)) == []
    assert list(store.read_range(EMPTY, 0, 100)) == []
    assert store.find_local(FileUri.parse(f"sha1://{EMPTY}/empty")) == stored.path


def test_manifest_is_stored_for_20_000_001_bytes(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    whole = write_pattern(src, 20_000_001)
    data = src.read_bytes()
    c0, c1 = hashlib.sha1(data[:20_000_000]).hexdigest(), hashlib.sha1(data[20_000_000:]).hexdigest()
    del data
    expected = (
        f'{{"size":20000001,"sha1":"{whole}","chunks":['
        f'{{"start":0,"end":20000000,"sha1":"{c0}"}},'
        f'{{"start":20000000,"end":20000001,"sha1":"{c1}"}}]}}'
    ).encode()
    stored = store.store_file(src)
    assert (stored.sha1, stored.size) == (whole, 20_000_001)
    assert stored.manifest_sha1 == hashlib.sha1(expected).hexdigest()
    assert store.content_path(stored.manifest_sha1).read_bytes() == expected
    assert sorted(content_files(store)) == sorted([content_relpath(whole), content_relpath(stored.manifest_sha1)])


def test_no_manifest_for_exactly_20_000_000_bytes(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "edge.bin"
    whole = write_pattern(src, 20_000_000)
    stored = store.store_file(src)
    assert (stored.sha1, stored.manifest_sha1) == (whole, None)
    assert content_files(store) == [content_relpath(whole)]


# -- concurrency -----------------------------------------------------------------------------


def test_concurrent_stores_from_threads(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "shared.bin"
    sha1 = write_pattern(src, 3 * len(PATTERN) + 17)
    barrier = threading.Barrier(8)
    results: list[object] = []

    def work() -> None:
        barrier.wait()
        try:
            results.append(store.store_file(src))
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert all(not isinstance(r, Exception) and r.sha1 == sha1 for r in results)  # type: ignore[attr-defined]
    assert content_files(store) == [content_relpath(sha1)]
    assert store.content_path(sha1).read_bytes() == src.read_bytes()
    assert temp_files(store) == []


def _store_in_process(root: str, src: str, start: object) -> str:
    start.wait()  # type: ignore[attr-defined]
    return ContentStore(Path(root)).store_file(Path(src)).sha1


def test_concurrent_stores_from_processes(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "shared.bin"
    sha1 = write_pattern(src, 4 * len(PATTERN) + 3)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(2) as pool:
            pending = [pool.apply_async(_store_in_process, (str(store.root), str(src), start)) for _ in range(2)]
            start.set()
            assert [p.get(timeout=120) for p in pending] == [sha1, sha1]
    assert content_files(store) == [content_relpath(sha1)]
    assert temp_files(store) == []


# -- failures --------------------------------------------------------------------------------


def _crash_during_rename(root: str, src: str) -> None:
    os.replace = lambda *args, **kwargs: os._exit(7)  # die mid-store
    ContentStore(Path(root)).store_file(Path(src))


def test_crash_before_rename_leaves_only_a_temp(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "crash.bin"
    sha1 = write_pattern(src, 1000)
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_crash_during_rename, args=(str(store.root), str(src)))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 7
    assert not store.has(sha1) and content_files(store) == []
    assert len(temp_files(store)) == 1
    # Fresh, but its writer is gone (no one holds its lock): it can never be finished, so it goes now.
    assert store.cleanup_temp(7 * 24 * 3600) == 1
    assert temp_files(store) == []
    assert store.store_file(src).sha1 == sha1


def test_failed_rename_cleans_up(store: ContentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(filestore.os, "replace", broken_replace)
    with pytest.raises(StoreError, match="Input/output error"):
        store.store_bytes(b"never stored")
    monkeypatch.undo()
    assert not store.has(hashlib.sha1(b"never stored").hexdigest())
    assert content_files(store) == [] and temp_files(store) == []


def test_disk_full_is_a_store_error_and_leaves_nothing(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big.bin"
    sha1 = write_pattern(src, 3 * len(PATTERN))
    calls = []

    def full_disk(fd: int, data: object) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the first block fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        os.write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(store_io, "write_all", full_disk)
    with pytest.raises(StoreError) as info:
        store.store_file(src)
    assert str(info.value) == f"no space left on device while storing {src}"
    assert not store.has(sha1)
    assert content_files(store) == [] and temp_files(store) == []


def test_missing_source(store: ContentStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        store.store_file(tmp_path / "nope")
    assert str(info.value) == f"cannot read {tmp_path / 'nope'}: No such file or directory"
    assert temp_files(store) == []


def test_directory_source(store: ContentStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        store.store_file(tmp_path)
    assert str(info.value) == f"cannot read {tmp_path}: not a regular file"
    assert temp_files(store) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_source(store: ContentStore, tmp_path: Path) -> None:
    src = tmp_path / "secret"
    src.write_bytes(b"x")
    src.chmod(0)
    with pytest.raises(StoreError) as info:
        store.store_file(src)
    assert str(info.value) == f"cannot read {src}: Permission denied"
    assert temp_files(store) == []


def test_read_error_midway_cleans_up(store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "flaky.bin"
    write_pattern(src, 3 * len(PATTERN))
    real_read_blocks = filestore._read_blocks

    def flaky(f: object, source: Path) -> Iterator[memoryview]:
        blocks = real_read_blocks(f, source)  # type: ignore[arg-type]
        yield next(blocks)
        raise StoreError(f"cannot read {source}: Input/output error")

    monkeypatch.setattr(filestore, "_read_blocks", flaky)
    with pytest.raises(StoreError, match="Input/output error"):
        store.store_file(src)
    assert content_files(store) == [] and temp_files(store) == []


# -- cleanup ---------------------------------------------------------------------------------


def _store_forever(root: str, ready: Any) -> None:
    def blocks() -> Iterator[memoryview]:
        yield memoryview(b"x" * 4096)
        ready.set()
        while True:
            time.sleep(0.05)
            yield memoryview(b"x" * 4096)

    ContentStore(Path(root))._store_blocks(blocks(), "an endless stream")


def test_kill_9_during_store_leaves_a_temp_removed_at_the_next_start(store: ContentStore) -> None:
    """Issue 10 #8: the 7-day age rule kept files that can never resume (20 kills: 4.71 GB)."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_store_forever, args=(str(store.root), ready))
    proc.start()
    try:
        assert ready.wait(60)
        assert [n for n in temp_files(store) if n.startswith("store-")]
        assert store.cleanup_temp(7 * 24 * 3600) == 0  # a live writer's temp stays
        assert [n for n in temp_files(store) if n.startswith("store-")]
    finally:
        assert proc.pid is not None
        os.kill(proc.pid, 9)
        proc.join(30)
    assert store.cleanup_temp(7 * 24 * 3600) == 1  # what the daemon runs at start
    assert temp_files(store) == []


def test_cleanup_temp_by_age(store: ContentStore) -> None:
    now = time.time()
    old, fresh = store.temp_dir / "other-abc.tmp", store.temp_dir / "other-def.tmp"  # another tool's
    old.write_bytes(b"old")
    fresh.write_bytes(b"fresh")
    os.utime(old, (now - 7200, now - 7200))
    foreign_dir = store.temp_dir / "tmpq1w2e3"  # kachery 0.6.7 mkdtemp dir
    foreign_dir.mkdir()
    (foreign_dir / "inner").write_bytes(b"x")
    os.utime(foreign_dir / "inner", (now - 7200, now - 7200))
    content = store.store_bytes(b"content")
    os.utime(content.path, (now - 7200, now - 7200))
    assert store.cleanup_temp(3600, now=now) == 1
    assert temp_files(store) == ["other-def.tmp", "tmpq1w2e3"]
    assert (foreign_dir / "inner").exists()
    assert store.cleanup_temp(0, now=now + 1) == 1
    assert temp_files(store) == ["tmpq1w2e3"]
    assert content.path.read_bytes() == b"content"


# -- reading ---------------------------------------------------------------------------------


def test_read_range(store: ContentStore) -> None:
    data = PATTERN * 2 + b"tail"
    sha1 = store.store_bytes(data).sha1
    blocks = list(store.read_range(sha1, 0, len(data)))
    assert all(len(b) <= 1024 * 1024 for b in blocks)
    assert b"".join(blocks) == data
    assert b"".join(store.read_range(sha1, 5, 1_500_000)) == data[5:1_500_000]
    assert b"".join(store.read_range(sha1, 10, 10**12)) == data[10:]  # end clamped
    assert list(store.read_range(sha1, len(data), len(data) + 5)) == []
    for start, end in [(-1, 5), (6, 5), (len(data) + 1, len(data) + 2)]:
        with pytest.raises(UsageError):
            store.read_range(sha1, start, end)
    with pytest.raises(NotFoundError):
        store.read_range("0" * 40, 0, 1)
    with pytest.raises(UsageError):
        store.read_range("not-a-hash", 0, 1)


def test_read_range_of_truncated_file(store: ContentStore) -> None:
    stored = store.store_bytes(b"0123456789")
    blocks = store.read_range(stored.sha1, 0, 10)
    os.truncate(stored.path, 4)  # damaged by another program after we looked at the size
    with pytest.raises(StoreError):
        b"".join(blocks)


# -- find_local, links, foreign stores -----------------------------------------------------------


def test_find_local_forms(store: ContentStore) -> None:
    stored = store.store_bytes(b"abc")
    h = stored.sha1
    assert store.find_local(FileUri.parse(f"sha1://{h.upper()}/any/name.txt?manifest={'1' * 40}")) == stored.path
    assert store.find_local(FileUri.parse(f"sha1://{'0' * 40}/x")) is None
    assert store.find_local(FileUri.parse(f"sha1://{h}?chunkOf={'2' * 40}~0~3")) == stored.path
    assert store.find_local(FileUri.parse(f"sha1://{'3' * 40}?chunkOf={h}~0~1")) is None
    assert store.find_local(FileUri.parse(f"sha1dir://{h}.d/x")) is None
    md5 = hashlib.md5(b"abc").hexdigest()
    assert store.find_local(FileUri.parse(f"md5://{md5}/x")) is None
    md5_path = store.root / content_relpath(md5, "md5")
    md5_path.parent.mkdir(parents=True)
    md5_path.write_bytes(b"abc")
    assert store.find_local(FileUri.parse(f"md5://{md5.upper()}/x")) == md5_path


@pytest.mark.parametrize("manifest_key", ["manifest_hash", "manifestSha1"])
def test_link_files(store: ContentStore, tmp_path: Path, manifest_key: str) -> None:
    target = tmp_path / "outside.bin"
    target.write_bytes(b"linked content")
    h = hashlib.sha1(b"linked content").hexdigest()
    st = target.stat()
    link = store.content_path(h).with_name(h + ".link")
    link.parent.mkdir(parents=True)
    record: dict[str, object] = {
        "path": str(target), manifest_key: None, "stat": {"size": st.st_size, "mtime": st.st_mtime}
    }
    if manifest_key == "manifestSha1":
        record["_writingProcess"] = "daemon"
    link.write_text(json.dumps(record))
    uri = FileUri.parse(f"sha1://{h}/x")
    assert store.find_local(uri) == target
    assert b"".join(store.read_range(h, 7, 100)) == b"content"
    assert not store.has(h)  # has() reports real content files only
    os.utime(target, (st.st_atime, st.st_mtime + 1))
    assert store.find_local(uri) is None  # modified since it was linked
    target.write_bytes(b"other size")
    assert store.find_local(uri) is None
    with pytest.raises(NotFoundError):
        store.read_range(h, 0, 1)
    target.unlink()
    assert store.find_local(uri) is None
    link.write_text("{not json")
    assert store.find_local(uri) is None


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Size, mtime and mode of every file (directories change mtime when entries are added)."""
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            continue
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def test_store_written_by_other_kachery_tools(tmp_path: Path) -> None:
    root = tmp_path / "ksd"
    data = b"written by kachery 0.6.7"
    h = hashlib.sha1(data).hexdigest()
    content = root / content_relpath(h)
    content.parent.mkdir(parents=True)
    content.write_bytes(data)
    foreign = {
        f"{content_relpath(h)}.hints.json": json.dumps({"files": [{"stat": {}, "sha1": h}]}),
        f"{content_relpath(h)}.hints.json.lock": "",
        "sha1/aa/52/53/aa5253a7d3c2f0d0b1e3f1e5f1b0c4d2e1596bb3.record.json": "{}",
        "sha1/aa/52/53/aa5253a7d3c2f0d0b1e3f1e5f1b0c4d2e1596bb3.record.json.lock": "",
        f"sha1/12/34/56/{'123456' + '0' * 34}.link": json.dumps({"path": "/nonexistent", "stat": {}}),
        f"{content_relpath(h)}.copying.Ab12Cd": "half",
        "sha1/a/bc/abc0000000000000000000000000000000000000": "block cache",
        "tmp/tmpx1y2z3/inner.bin": "kachery temp dir",
        "store.file.abcdefghij.tmp": "daemon temp",
        "kachery-node-id": "node",
    }
    for rel, text in foreign.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    before = snapshot(root)
    store = ContentStore(root)
    assert store.has(h)
    assert store.find_local(FileUri.parse(f"sha1://{h}/x")) == content
    assert b"".join(store.read_range(h, 0, 100)) == data
    assert not store.has("123456" + "0" * 34)
    assert store.store_bytes(data).path == content
    new = store.store_bytes(b"new content")
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {content_relpath(new.sha1)}


# -- BlobWriter ------------------------------------------------------------------------------


def test_blob_writer_commits_verified_bytes(store: ContentStore) -> None:
    data = b"received from a peer" * 1000
    h = hashlib.sha1(data).hexdigest()
    with store.open_blob_writer(h.upper(), len(data)) as writer:
        writer.write(data[:100])
        writer.write(memoryview(data)[100:])
        path = writer.commit()
    assert path == store.content_path(h) and path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert writer.bytes_written == len(data)
    assert temp_files(store) == []
    with pytest.raises(UsageError):
        writer.write(b"more")


def test_blob_writer_rejects_wrong_bytes(store: ContentStore) -> None:
    h = hashlib.sha1(b"the real thing").hexdigest()
    with store.open_blob_writer(h) as writer:
        writer.write(b"an impostor")
        with pytest.raises(VerificationError, match="hash"):
            writer.commit()
    assert not store.has(h) and content_files(store) == [] and temp_files(store) == []


def test_blob_writer_checks_size(store: ContentStore) -> None:
    h = hashlib.sha1(b"12345").hexdigest()
    writer = store.open_blob_writer(h, 4)
    writer.write(b"1234")
    with pytest.raises(VerificationError, match="more than"):
        writer.write(b"5")
    assert temp_files(store) == []
    writer = store.open_blob_writer(h, 6)
    writer.write(b"12345")
    with pytest.raises(VerificationError, match="expected 6"):
        writer.commit()
    assert content_files(store) == [] and temp_files(store) == []


def test_blob_writer_aborts_without_commit(store: ContentStore) -> None:
    h = hashlib.sha1(b"x").hexdigest()
    with pytest.raises(RuntimeError), store.open_blob_writer(h) as writer:
        writer.write(b"x")
        raise RuntimeError("connection lost")
    with store.open_blob_writer(h) as writer:
        writer.write(b"x")
    assert not store.has(h) and temp_files(store) == []


def test_blob_writer_when_content_already_there(store: ContentStore) -> None:
    stored = store.store_bytes(b"dup")
    mtime = stored.path.stat().st_mtime_ns
    with store.open_blob_writer(stored.sha1, 3) as writer:
        writer.write(b"dup")
        assert writer.commit() == stored.path
    assert stored.path.stat().st_mtime_ns == mtime and temp_files(store) == []


def test_blob_writer_bad_hash(store: ContentStore) -> None:
    with pytest.raises(UsageError):
        store.open_blob_writer("xyz")
    assert temp_files(store) == []
