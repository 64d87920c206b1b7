"""The original kachery-p2p's Python API across two real daemons: its documented examples unchanged
(text, json/object, npy, pkl round trips), p2p=False, from_node, linked files served and then refused
when changed, mutables, kachery-p2p-link, and offline stores identical to the daemon's."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import peer_entry, udp_port, wait_until

MISSING_TIMEOUT = 3.0


def _pair(daemon_factory: Any) -> tuple[Any, Any]:
    channel = f"api-{uuid.uuid4().hex[:12]}"
    a = daemon_factory.start("alpha", ["-v"])
    assert a.run("join-channel", channel).returncode == 0
    b = daemon_factory.start("beta", ["-v", "--bootstrap", f"127.0.0.1:{udp_port(a)}"])
    assert b.run("join-channel", channel).returncode == 0
    for x, y in ((a, b), (b, a)):
        other = y.node_id

        def shared(x: Any = x, other: str = other) -> bool:
            entry = peer_entry(x, other)
            return entry is not None and channel in entry.get("channels", [])

        wait_until(shared, 30.0, f"{x.label} to share the channel")
    return a, b


@pytest.fixture
def pair(daemon_factory: Any) -> tuple[Any, Any]:
    return _pair(daemon_factory)


def test_original_examples_round_trip_between_two_daemons(pair: tuple[Any, Any], tmp_path: Path) -> None:
    a, b = pair
    # The original README's examples, as written there.
    uri = a.api("store_text", "some text")
    assert b.api("load_text", uri) == "some text"
    juri = a.api("store_json", {"a": 1, "b": [2, 3]})
    assert juri.endswith("/file.json") and b.api("load_json", juri) == {"a": 1, "b": [2, 3]}
    ouri = a.api("store_object", dict(x="y"))
    assert b.api("load_object", ouri) == {"x": "y"}
    array = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    nuri = a.api("store_npy", array)
    assert nuri.endswith("/file.npy")
    back = b.api("load_npy", nuri)
    assert back.dtype == np.float64 and (back == array).all()
    puri = a.api("store_pkl", {"arr": array[:3], "t": (1, 2)}, basename="thing.pkl")
    value = b.api("load_pkl", puri)
    assert puri.endswith("/thing.pkl") and value["t"] == (1, 2) and (value["arr"] == array[:3]).all()
    (tmp_path / "f.txt").write_text("file content")
    furi = a.api("store_file", str(tmp_path / "f.txt"), basename="renamed.txt")
    assert furi.endswith("/renamed.txt")
    path = b.api("load_file", furi)
    assert path is not None and Path(path).read_text() == "file content"
    assert b.api("load_bytes", furi, 5, 12) == b"content"


def test_p2p_false_never_asks_peers_and_from_node(pair: tuple[Any, Any]) -> None:
    a, b = pair
    uri = a.api("store_text", f"only on a {uuid.uuid4()}")
    assert b.api("load_file", uri, p2p=False) is None
    assert b.api("load_text", uri, p2p=False) is None
    assert b.api("find_file", uri) != []  # a has it: only p2p=False kept b from loading it
    assert b.api("load_file", uri, from_node="0" * 64, timeout_sec=MISSING_TIMEOUT) is None
    path = b.api("load_file", uri, from_node=a.node_id)
    assert path is not None and Path(path).is_relative_to(b.storage_dir)
    assert b.api("load_file", uri, p2p=False) == path  # now local
    # nop2p: loads are local-only, find_file says nothing.
    other = a.api("store_text", f"other {uuid.uuid4()}")
    try:
        b.api("_experimental_config", nop2p=True)
        assert b.api("load_text", other) is None
        assert b.api("find_file", other) == []
    finally:
        b.api("_experimental_config", nop2p=False)
    assert b.api("load_text", other) is not None


def test_linked_file_is_served_then_refused_when_changed(pair: tuple[Any, Any], tmp_path: Path) -> None:
    a, b = pair
    first, second = tmp_path / "first.nwb", tmp_path / "second.nwb"
    first.write_bytes(os.urandom(300_000))
    second.write_bytes(os.urandom(300_000))
    result = a.run("link", str(first))
    assert result.returncode == 0, result.stderr
    uri1 = result.stdout.strip()
    uri2 = a.api("link_file", str(second))
    assert uri1 == f"sha1://{hashlib.sha1(first.read_bytes()).hexdigest()}/first.nwb"
    # Not copied into A's store; kachery-p2p-load on A prints the file's own path.
    assert not any(p.name == uri1.split("/")[2] for p in a.storage_dir.rglob("*"))
    load = a.run("load", uri1)
    assert load.returncode == 0 and load.stdout.strip() == str(first)
    # Served to B.
    path = b.api("load_file", uri1)
    assert path is not None and Path(path).read_bytes() == first.read_bytes()
    # Changed in place behind the same size and mtime: A re-hashes what it serves and refuses.
    st = second.stat()
    with open(second, "r+b") as handle:
        handle.write(b"\0" * 10)
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns))
    # A still offers it (size and mtime match), but no byte of the changed chunk reaches B.
    assert [p["nodeId"] for p in b.api("find_file", uri2)] == [a.node_id]
    assert b.api("load_file", uri2, timeout_sec=MISSING_TIMEOUT) is None
    assert not any(p.name.startswith(uri2.split("/")[2]) for p in b.storage_dir.rglob("*"))
    # ...because A refused to send it (B did not merely reject wrong bytes); A's path stays private.
    assert f"not serving {uri2.split('/')[2]}" in b.log_text()
    assert str(second) not in b.log_text()
    # A dropped the stale link: it no longer offers the file at all.
    assert b.api("find_file", uri2) == []
    assert a.api("load_file", uri2, p2p=False) is None
    # Changed with a new mtime: A no longer offers it at all.
    first.write_bytes(b"changed")
    assert a.api("load_file", uri1, p2p=False) is None


def test_mutables_through_the_daemon(daemon_factory: Any) -> None:
    a = daemon_factory.start("mut")
    assert a.api("get", "nothing") is None
    assert a.api("set", "k", {"v": 1}) is None
    assert a.api("get", "k") == {"v": 1}
    a.api("set", {"type": "feedIdForName", "feedName": "x"}, "abc")
    assert a.api("get", {"feedName": "x", "type": "feedIdForName"}) == "abc"
    assert a.api("get_string", "k") == str({"v": 1})
    assert a.api("delete", "k") is None
    assert a.api("get", "k") is None
    assert (a.config_dir / "mutables.db").exists()
    a.stop()
    a.start()
    assert a.api("get", {"type": "feedIdForName", "feedName": "x"}) == "abc"


def test_offline_store_gives_the_daemons_uri(daemon_factory: Any, tmp_path: Path, monkeypatch: Any) -> None:
    a = daemon_factory.start("big")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1000) * 20_001)
    uri = a.api("store_file", str(source))
    assert "?manifest=" in uri
    monkeypatch.setenv("KACHERY_OFFLINE_STORAGE_DIR", str(tmp_path / "offline"))
    import kachery_p2p as kp

    assert kp.store_file(str(source)) == uri
    manifest = uri.split("manifest=")[1]
    rel = f"sha1/{manifest[:2]}/{manifest[2:4]}/{manifest[4:6]}/{manifest}"
    assert (tmp_path / "offline" / rel).read_bytes() == (a.storage_dir / rel).read_bytes()


def test_original_test_1_and_transfer_test(pair: tuple[Any, Any]) -> None:
    """test/test_1.py (each node stores a dict of 1,000,000 ints, each loads the other's) and
    devel/transfer_test (a meshgrid .npy big enough for a manifest), with the original's calls."""
    a, b = pair
    uri_a = a.api("store_object", dict(data=list(range(1_000_000)), node="a"))
    uri_b = b.api("store_object", dict(data=list(range(1_000_000)), node="b"))
    assert b.api("load_object", uri_a)["node"] == "a"
    other = a.api("load_object", uri_b)
    assert other["node"] == "b" and other["data"][-1] == 999_999
    x, y = np.meshgrid(np.arange(1002), np.arange(2600))
    array = (x * 1.5 + y).astype(np.float64)  # 20,841,600 bytes of data: two chunks
    uri = a.api("store_npy", array)
    assert "?manifest=" in uri
    back = b.api("load_npy", uri)
    assert back.shape == (2600, 1002) and np.array_equal(back, array)


def test_sha1dir_and_chunk_of_across_daemons(pair: tuple[Any, Any]) -> None:
    a, b = pair
    inner = a.api("store_text", "inside a legacy directory")
    data = os.urandom(50_000)
    parent = a.api("store_bytes", data)
    directory = {"files": {}, "dirs": {"rec": {"files": {"raw.txt": {"size": 25, "sha1": inner.split("/")[2]}},
                                               "dirs": {}}}}
    dir_hash = a.api("store_json", directory).split("/")[2]
    # B has neither the directory object nor the file: both come from A.
    assert b.api("load_text", f"sha1dir://{dir_hash}.recording/rec/raw.txt") == "inside a legacy directory"
    assert b.api("load_file", f"sha1dir://{dir_hash}.recording/rec/missing.txt") is None
    chunk = data[10_000:30_000]
    chunk_uri = f"sha1://{hashlib.sha1(chunk).hexdigest()}?chunkOf={parent.split('/')[2]}~10000~30000"
    path = b.api("load_file", chunk_uri)
    assert path is not None and Path(path).read_bytes() == chunk
    assert b.api("load_bytes", chunk_uri, 100, 200) == chunk[100:200]
