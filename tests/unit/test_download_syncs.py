"""Disk syncs of a download (the real Download code, an in-memory provider).

A small file is one chunk: it is hashed, synced and stored as soon as its bytes are in, so the resume
record (the partial file's sidecar: an fdatasync, a synced temp file and a rename) is not written for
it. Those syncs were most of the time of a 1 KiB load on a busy disk. A file of several chunks still
records each verified chunk, so an interrupted download resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kachery_p2p.daemon.download import Download, Provider
from kachery_p2p.ids import FileUri
from kachery_p2p.store import ContentStore, ManifestBuilder


class OneProvider:
    def __init__(self, data: bytes, manifest: bytes | None = None) -> None:
        self.node_id = "ab" * 32
        self.data = data
        self.manifest = manifest
        self.link = SimpleNamespace(is_closed=False, path=SimpleNamespace(kind="direct"))

    async def request(self, header: dict[str, Any], sink: Any = None, timeout: float | None = None) -> Any:
        await asyncio.sleep(0)
        is_manifest = header["sha1"] != hashlib.sha1(self.data).hexdigest()
        if header["op"] == "has":
            return {"ok": True, "size": len(self.manifest if is_manifest and self.manifest else self.data)}, b""
        if is_manifest:
            assert self.manifest is not None
            return {"ok": True, "length": len(self.manifest)}, self.manifest
        body = self.data[header["start"] : header["end"]]
        if sink is None:
            return {"ok": True, "length": len(body)}, body
        sink(body)
        return {"ok": True, "length": len(body)}, b""


def download(store: ContentStore, data: bytes, manifest_sha1: str | None = None, manifest: bytes | None = None) -> Path:
    uri = FileUri(algorithm="sha1", hash=hashlib.sha1(data).hexdigest(), manifest=manifest_sha1)
    session = OneProvider(data, manifest)

    async def progress(message: dict[str, Any]) -> None:
        return None

    return asyncio.run(Download(store, uri, [Provider(session, len(data))], progress).run())  # type: ignore[arg-type]


@pytest.fixture
def fdatasyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def test_a_one_chunk_download_writes_no_resume_record(tmp_path: Path, fdatasyncs: list[int]) -> None:
    store = ContentStore(tmp_path / "store")
    data = os.urandom(1024)
    path = download(store, data)
    assert path.read_bytes() == data
    assert fdatasyncs == []  # the sidecar's sync: before, one per 1 KiB load


def test_a_download_of_several_chunks_still_records_each_verified_chunk(
    tmp_path: Path, fdatasyncs: list[int]
) -> None:
    data = os.urandom(3 * 4096 + 100)
    builder = ManifestBuilder(chunk_size=4096)
    builder.update(data)
    _sha1, manifest = builder.finish()
    assert manifest is not None and len(manifest.chunks) == 4
    body = manifest.to_json_bytes()
    store = ContentStore(tmp_path / "store")
    path = download(store, data, hashlib.sha1(body).hexdigest(), body)
    assert path.read_bytes() == data
    assert len(fdatasyncs) >= 1
