"""Downloads against lying providers (issue 10 #2 and #3): the real Download code, with scripted
in-memory sessions instead of QUIC. A claim is never trusted over verification; disk use is bounded
by the free space, and a lie or a full disk leaves no partial file behind."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kachery_p2p.daemon import download as download_module
from kachery_p2p.daemon.download import Download, Provider
from kachery_p2p.errors import NotFoundError, StoreError
from kachery_p2p.ids import FileUri
from kachery_p2p.store import ContentStore, ManifestBuilder
from kachery_p2p.store import _io as store_io
from kachery_p2p.transfer.policy import Attempt, DownloadPolicy, fits_on_disk

MB = 1_000_000


class FakeSession:
    """Answers has / manifest / get like a provider, from ``data``, claiming ``size``."""

    def __init__(self, name: str, data: bytes, size: int | None = None, manifest: bytes | None = None) -> None:
        self.node_id = hashlib.sha256(name.encode()).hexdigest()
        self.data = data
        self.size = len(data) if size is None else size
        self.manifest = manifest
        self.link = SimpleNamespace(is_closed=False, path=SimpleNamespace(kind="direct"))
        self.bytes_sent = 0

    async def request(self, header: dict[str, Any], sink: Callable[[bytes], None] | None = None,
                      timeout: float | None = None) -> tuple[dict[str, Any], bytes]:
        await asyncio.sleep(0)
        op = header["op"]
        if op == "has":
            return {"ok": True, "size": self.size}, b""
        if op == "manifest":
            if self.manifest is None:
                return {"ok": False, "code": "not_found", "message": "no manifest"}, b""
            return {"ok": True, "length": len(self.manifest)}, self.manifest
        start, end = header["start"], header["end"]
        body = self.data[start:end]
        self.bytes_sent += len(body)
        if sink is None:
            return {"ok": True, "length": len(body)}, body
        for i in range(0, len(body), 1 << 20):
            sink(body[i : i + (1 << 20)])
        return {"ok": True, "length": len(body)}, b""


def manifest_of(data: bytes) -> bytes:
    builder = ManifestBuilder()
    builder.update(data)
    _sha1, manifest = builder.finish()
    assert manifest is not None
    return manifest.to_json_bytes()


def load(store: ContentStore, data: bytes, sessions: list[FakeSession]) -> tuple[Path, Download]:
    uri = FileUri(algorithm="sha1", hash=hashlib.sha1(data).hexdigest())
    providers = [Provider(s, s.size) for s in sessions]  # type: ignore[arg-type]

    async def progress(message: dict[str, Any]) -> None:
        return None

    download = Download(store, uri, providers, progress)
    return asyncio.run(download.run()), download


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


def temp_files(store: ContentStore) -> list[str]:
    return sorted(os.listdir(store.temp_dir))


def test_two_liars_claiming_size_plus_one_do_not_beat_one_honest_provider(store: ContentStore) -> None:
    """#2: the size was picked by majority vote: two sessions claiming size+1 failed 5 of 5 loads."""
    data = os.urandom(5 * MB)
    liars = [FakeSession(f"liar{i}", os.urandom(len(data) + 1)) for i in range(2)]
    honest = FakeSession("honest", data)
    path, download = load(store, data, [*liars, honest])
    assert path.read_bytes() == data
    assert set(download.bad_providers) == {s.node_id for s in liars}
    assert honest.node_id not in download.bad_providers
    assert temp_files(store) == []


def test_liars_claiming_a_smaller_size_are_dropped_too(store: ContentStore) -> None:
    data = os.urandom(3 * MB)
    liars = [FakeSession(f"short{i}", data[:-10]) for i in range(3)]
    path, download = load(store, data, [*liars, FakeSession("honest", data)])
    assert path.read_bytes() == data and set(download.bad_providers) == {s.node_id for s in liars}


def test_a_lying_manifest_is_discarded_at_once_and_the_honest_provider_wins(store: ContentStore) -> None:
    """#3: a provider's manifest was checked only against the whole sha1, checked last, and the failed
    partial file stayed 7 days. Now its attempt is discarded as soon as the whole check fails."""
    data = os.urandom(21 * MB)  # above the manifest threshold, and the URI names no manifest
    garbage = os.urandom(len(data))
    real_sha1, garbage_sha1 = hashlib.sha1(data).hexdigest().encode(), hashlib.sha1(garbage).hexdigest().encode()
    forged = manifest_of(garbage).replace(garbage_sha1, real_sha1)
    liar = FakeSession("liar", garbage, manifest=forged)
    honest = FakeSession("honest", data, manifest=manifest_of(data))
    path, download = load(store, data, [liar, honest])
    assert path.read_bytes() == data
    assert download.bad_providers == [liar.node_id]
    assert temp_files(store) == []


def test_a_claim_larger_than_the_free_space_is_never_started(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#3: a claimed 200 MB file filled a 50 MB disk in 0.5 s."""
    data = os.urandom(2 * MB)
    usage = SimpleNamespace(total=50 * MB, free=50 * MB)
    monkeypatch.setattr(download_module, "disk_usage", lambda path: usage)
    liar = FakeSession("liar", os.urandom(MB), size=200 * MB)
    path, download = load(store, data, [liar, FakeSession("honest", data)])
    assert path.read_bytes() == data
    assert liar.bytes_sent == 0  # nothing of the huge claim was fetched, nothing written
    assert liar.node_id in download.bad_providers
    with pytest.raises(StoreError, match="not enough free disk space"):
        load(ContentStore(store.root.parent / "other"), data, [FakeSession("liar2", b"", size=200 * MB)])


def test_disk_full_removes_the_partial_and_says_so(store: ContentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """#3: an honest load hitting ENOSPC left the disk full."""
    data = os.urandom(3 * MB)
    writes: list[int] = []

    def full_disk(fd: int, chunk: Any, offset: int) -> None:
        writes.append(offset)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.pwrite(fd, chunk, offset)

    monkeypatch.setattr(store_io, "pwrite_all", full_disk)
    with pytest.raises(StoreError, match=r"no space left on device.*removed the partial download"):
        load(store, data, [FakeSession("honest", data)])
    assert temp_files(store) == []


def test_policy_tries_every_claim_most_claimants_first_then_the_smaller() -> None:
    policy = DownloadPolicy({"a": 10, "b": 10, "c": 9, "d": 11}, needs_provider_manifest=lambda size: False)
    first = policy.next_attempt(lambda size: True)
    assert first == Attempt(10, ("a", "b"))
    policy.attempt_failed(first, {"a", "b"})
    second = policy.next_attempt(lambda size: True)
    assert second is not None and second.size == 9
    assert policy.succeeded(second) == {"a", "b", "d"}


def test_policy_gives_each_manifest_source_its_own_attempt() -> None:
    policy = DownloadPolicy({"a": 30, "b": 30}, needs_provider_manifest=lambda size: True)
    first = policy.next_attempt(lambda size: True)
    assert first == Attempt(30, ("a", "b"), "a")
    policy.attempt_failed(first, {"a"})
    assert policy.next_attempt(lambda size: True) == Attempt(30, ("b",), "b")
    assert policy.next_attempt(lambda size: True) is None


def test_fits_on_disk_keeps_a_margin() -> None:
    assert fits_on_disk(40 * MB, free_bytes=50 * MB, total_bytes=50 * MB)
    assert not fits_on_disk(49 * MB, free_bytes=50 * MB, total_bytes=50 * MB)
    assert fits_on_disk(49 * MB, free_bytes=50 * MB, total_bytes=50 * MB, already_on_disk=10 * MB)


def test_no_provider_verifies_is_a_clear_not_found(store: ContentStore) -> None:
    data = os.urandom(MB)
    with pytest.raises(NotFoundError, match="no provider's bytes verified"):
        load(store, data, [FakeSession("liar", os.urandom(MB)), FakeSession("liar2", os.urandom(MB + 5))])
    assert temp_files(store) == [] or all(not n.endswith(".tmp") for n in temp_files(store))
