"""Offline mode (KACHERY_OFFLINE_STORAGE_DIR): load and store with no daemon at all; sha1dir://,
?chunkOf=, linked files, TemporaryDirectory, _experimental_config."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kachery_p2p as kp
from kachery_p2p.client import local
from kachery_p2p.errors import UsageError, VerificationError
from kachery_p2p.store import ContentStore
from kachery_p2p.store.links import LinkedChunks


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "offline-store"
    monkeypatch.setenv("KACHERY_OFFLINE_STORAGE_DIR", str(root))
    # Nothing listens there: any attempt to reach a daemon would fail loudly.
    monkeypatch.setenv("KACHERY_P2P_CONFIG_DIR", str(tmp_path / "no-daemon"))
    monkeypatch.setenv("KACHERY_P2P_API_PORT", "9")
    monkeypatch.delenv("KACHERY_TEMP_DIR", raising=False)
    yield root


def test_text_json_object_round_trips_offline(offline: Path) -> None:
    uri = kp.store_text("hello offline")
    assert uri == f"sha1://{hashlib.sha1(b'hello offline').hexdigest()}/file.txt"
    assert kp.load_text(uri) == "hello offline"
    path = kp.load_file(uri)
    assert path is not None and Path(path).is_relative_to(offline)
    juri = kp.store_json({"a": [1, 2]}, basename="x.json")
    assert juri.endswith("/x.json") and kp.load_json(juri) == {"a": [1, 2]}
    ouri = kp.store_object({"b": 1})
    assert ouri.endswith("/file.json") and kp.load_object(ouri) == {"b": 1}
    assert kp.load_text("sha1://" + "0" * 40 + "/missing.txt") is None
    assert kp.load_file("sha1://" + "0" * 40) is None


def test_npy_and_pkl_round_trips_offline(offline: Path) -> None:
    array = np.linspace(0, 1, 1000).reshape(10, 100)
    uri = kp.store_npy(array)
    assert uri.endswith("/file.npy")
    back = kp.load_npy(uri)
    assert back.shape == (10, 100) and (back == array).all()
    puri = kp.store_pkl({"x": array[:2], "n": np.int64(3)}, basename="p.pkl")
    value = kp.load_pkl(puri)
    assert puri.endswith("/p.pkl") and (value["x"] == array[:2]).all() and value["n"] == 3


def test_large_file_manifest_is_the_daemons(offline: Path, tmp_path: Path) -> None:
    data = os.urandom(1000) * 20_001  # 20,001,000 bytes: two chunks
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    uri = kp.store_file(source)
    expected = ContentStore(tmp_path / "reference").store_file(source)
    assert uri == f"sha1://{expected.sha1}/big.bin?manifest={expected.manifest_sha1}"
    assert kp.load_bytes(uri, 19_999_990, 20_000_010) == data[19_999_990:20_000_010]


def test_dest_copies(offline: Path, tmp_path: Path) -> None:
    uri = kp.store_text("to dest")
    dest = tmp_path / "out.txt"
    assert kp.load_file(uri, dest=str(dest)) == str(dest)
    assert dest.read_text() == "to dest"


def test_sha1dir_resolves_through_the_directory_object(offline: Path) -> None:
    a = kp.store_text("file a")
    b = kp.store_text("file b in sub")
    sha = {u: u.split("/")[2] for u in (a, b)}
    directory = {
        "files": {"a.txt": {"size": 6, "sha1": sha[a]}},
        "dirs": {"sub": {"files": {"\u00fcn b.txt": {"size": 13, "sha1": sha[b]}}, "dirs": {}}},
    }
    # Stored the way the original store_dir did: simplejson default separators, \\u escapes.
    dir_uri = kp.store_bytes(json.dumps(directory).encode())
    dir_hash = dir_uri.split("/")[2]
    assert kp.load_text(f"sha1dir://{dir_hash}.mydir/a.txt") == "file a"
    assert kp.load_text(f"sha1dir://{dir_hash}.mydir/sub/\u00fcn b.txt") == "file b in sub"
    path = kp.load_file(f"sha1dir://{dir_hash}/sub/\u00fcn b.txt")
    assert path is not None and Path(path).read_text() == "file b in sub"
    assert kp.load_file(f"sha1dir://{dir_hash}.mydir/nope.txt") is None
    assert kp.load_file(f"sha1dir://{dir_hash}.mydir/sub/nope/x.txt") is None
    with pytest.raises(UsageError, match="names a directory"):
        kp.load_file(f"sha1dir://{dir_hash}.mydir")


def test_chunk_of_loads_the_chunk(offline: Path) -> None:
    data = bytes(range(256)) * 100
    parent = kp.store_bytes(data).split("/")[2]
    chunk = data[1000:5000]
    uri = f"sha1://{hashlib.sha1(chunk).hexdigest()}?chunkOf={parent}~1000~5000"
    path = kp.load_file(uri)
    assert path is not None and Path(path).read_bytes() == chunk
    assert kp.load_bytes(uri, 10, 20) == chunk[10:20]
    wrong = f"sha1://{'1' * 40}?chunkOf={parent}~1000~5000"
    with pytest.raises(VerificationError):
        kp.load_file(wrong)


def test_link_file_offline_and_modified_file(offline: Path, tmp_path: Path) -> None:
    source = tmp_path / "linked.bin"
    source.write_bytes(b"linked content " * 1000)
    uri = kp.link_file(str(source))
    sha1 = uri.split("/")[2]
    record = json.loads((offline / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / f"{sha1}.link").read_text())
    assert record["path"] == str(source) and record["stat"]["size"] == 15000
    assert record["stat"]["mtime"] == source.stat().st_mtime and "manifestSha1" in record
    assert not (offline / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1).exists()  # no copy
    assert kp.load_file(uri) == str(source)
    chunks = LinkedChunks(ContentStore(offline))
    assert b"".join(chunks.read_range(sha1, 5, 40)) == source.read_bytes()[5:40]
    # Changed in place behind the same size and mtime: still never served as the old content.
    st = source.stat()
    source.write_bytes(b"LINKED content " * 1000)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(VerificationError, match="no longer matches"):
        b"".join(LinkedChunks(ContentStore(offline)).read_range(sha1, 5, 40))
    # Changed with a new mtime: not even loaded locally.
    source.write_bytes(b"other")
    assert kp.load_file(uri) is None


def test_offline_refuses_daemon_only_functions(offline: Path) -> None:
    with pytest.raises(UsageError, match="offline mode"):
        kp.get_node_id()
    with pytest.raises(UsageError, match="offline mode"):
        kp.set("k", 1)


def test_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KACHERY_TEMP_DIR", str(tmp_path / "ktmp"))
    with kp.TemporaryDirectory(prefix="job") as path:
        assert Path(path).is_dir() and Path(path).parent == tmp_path / "ktmp"
        assert Path(path).name.startswith("job")
        (Path(path) / "x").write_text("x")
    assert not Path(path).exists()
    with kp.TemporaryDirectory(remove=False) as kept:
        pass
    assert Path(kept).is_dir()


def test_experimental_config_nop2p(offline: Path) -> None:
    uri = kp.store_text("x")
    try:
        kp._experimental_config(nop2p=True)
        assert local.settings.nop2p
        assert kp.load_text(uri) == "x"
    finally:
        kp._experimental_config(nop2p=False)


def test_npy_without_numpy_says_how_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "import kachery_p2p as kp\n"
        "try:\n    kp.store_npy([1])\nexcept kp.UsageError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'kachery-p2p[numpy]'" in out


def test_import_loads_neither_numpy_nor_aioquic() -> None:
    code = "import json, sys; import kachery_p2p; print(json.dumps(sorted(m for m in sys.modules " \
        "if m.split('.')[0] in ('numpy', 'aioquic', 'aiohttp'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
