"""One daemon, driven by the seed's commands and by the Python API, as a user would."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import kachery_p2p

CHUNK = 20_000_000
EMPTY_SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def content_path(storage: Path, sha1: str) -> Path:
    return storage / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def expected_manifest(data: bytes) -> bytes:
    """The original kachery-p2p's manifest JSON, built here independently of the product."""
    chunks = [
        {"start": s, "end": min(s + CHUNK, len(data)), "sha1": hashlib.sha1(data[s : s + CHUNK]).hexdigest()}
        for s in range(0, len(data), CHUNK)
    ]
    obj = {"size": len(data), "sha1": hashlib.sha1(data).hexdigest(), "chunks": chunks}
    return json.dumps(obj, separators=(",", ":")).encode()


def stdout_line(result: object) -> str:
    """The single stdout line of a successful command."""
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    lines = result.stdout.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stdout  # type: ignore[attr-defined]
    return str(lines[0])


def test_store_load_cat_find(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory.start("a")
    data = bytes(range(256)) * 40 + b"tail"
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    sha1 = hashlib.sha1(data).hexdigest()

    uri = stdout_line(d.run("store", str(src)))
    assert uri == f"sha1://{sha1}/data.bin"
    stored = content_path(d.storage_dir, sha1)
    assert stored.read_bytes() == data

    assert stdout_line(d.run("load", uri)) == str(stored)
    # other accepted forms of the same URI resolve to the same file
    for form in (
        f"sha1://{sha1}",
        f"sha1://{sha1}/",
        f"SHA1://{sha1.upper()}/x",
        f"sha1://{sha1}.lbl/a/b c/é.bin",
        f"sha1://{sha1}/data.bin?label=x&other=1",
    ):
        assert stdout_line(d.run("load", form)) == str(stored), form

    dest_dir = tmp_path / "out"
    dest_dir.mkdir()
    dest = dest_dir / "copy.bin"
    assert stdout_line(d.run("load", uri, "--dest", str(dest))) == str(dest)
    assert dest.read_bytes() == data
    assert os.listdir(dest_dir) == ["copy.bin"], "temp files left next to --dest"

    cat = d.run("cat", uri, text=False)
    assert cat.returncode == 0 and cat.stdout == data and cat.stderr == b""
    size = len(data)
    for start, end in [(0, 1), (5, 17), (size - 4, size), (size - 1, size), (7, 7), (size, size), (0, size)]:
        got = d.run("cat", uri, "--start", str(start), "--end", str(end), text=False)
        assert got.returncode == 0, got.stderr
        assert got.stdout == data[start:end], (start, end)
    assert d.run("cat", uri, "--start", "100", text=False).stdout == data[100:]
    assert d.run("cat", uri, "--end", "100", text=False).stdout == data[:100]

    found = json.loads(stdout_line(d.run("find", uri)))
    assert found["nodeId"] == d.node_id
    assert found["size"] == size

    # names are printed raw (spaces, UTF-8), as the original does
    src = tmp_path / "my file é.txt"
    src.write_text("unicode name\n")
    sha1 = hashlib.sha1(src.read_bytes()).hexdigest()
    assert stdout_line(d.run("store", str(src))) == f"sha1://{sha1}/my file é.txt"


def test_empty_file(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory.start("a")
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    uri = stdout_line(d.run("store", str(src)))
    assert uri == f"sha1://{EMPTY_SHA1}/empty.txt"
    path = stdout_line(d.run("load", uri))
    assert path == str(content_path(d.storage_dir, EMPTY_SHA1))
    assert Path(path).read_bytes() == b""
    cat = d.run("cat", uri, text=False)
    assert cat.returncode == 0 and cat.stdout == b""
    dest = tmp_path / "empty-copy"
    assert stdout_line(d.run("load", uri, "--dest", str(dest))) == str(dest)
    assert dest.read_bytes() == b""
    assert json.loads(stdout_line(d.run("find", uri)))["size"] == 0


def test_manifest_uri_for_large_files(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory.start("a")
    big = os.urandom(1 << 20) * 19 + os.urandom(CHUNK - 19 * (1 << 20) + 1)
    assert len(big) == 20_000_001
    src = tmp_path / "big.dat"
    src.write_bytes(big)
    sha1 = hashlib.sha1(big).hexdigest()
    manifest = expected_manifest(big)
    manifest_sha1 = hashlib.sha1(manifest).hexdigest()

    uri = stdout_line(d.run("store", str(src)))
    assert uri == f"sha1://{sha1}/big.dat?manifest={manifest_sha1}"
    assert content_path(d.storage_dir, sha1).read_bytes() == big
    assert content_path(d.storage_dir, manifest_sha1).read_bytes() == manifest
    assert stdout_line(d.run("load", uri)) == str(content_path(d.storage_dir, sha1))
    tail = d.run("cat", uri, "--start", str(CHUNK - 3), "--end", str(len(big)), text=False)
    assert tail.stdout == big[CHUNK - 3 :]

    # exactly one chunk: no manifest
    exact = tmp_path / "exact.dat"
    exact.write_bytes(big[:CHUNK])
    assert stdout_line(d.run("store", str(exact))) == f"sha1://{hashlib.sha1(big[:CHUNK]).hexdigest()}/exact.dat"


def test_python_api(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory.start("a")
    src = tmp_path / "hello.txt"
    src.write_text("hello, kachery\n")
    sha1 = hashlib.sha1(src.read_bytes()).hexdigest()

    uri = d.api("store_file", str(src))
    assert uri == f"sha1://{sha1}/hello.txt"
    assert d.api("load_file", uri) == str(content_path(d.storage_dir, sha1))
    dest = tmp_path / "dest.txt"
    assert d.api("load_file", uri, str(dest)) == str(dest)
    assert dest.read_text() == "hello, kachery\n"
    assert d.api("load_bytes", uri, 0, 5) == b"hello"
    assert d.api("load_bytes", uri, 7, 15) == b"kachery\n"
    assert d.api("load_bytes", uri, 3, 3) == b""
    assert d.api("load_text", uri) == "hello, kachery\n"

    text_uri = d.api("store_text", "some text ✓")
    assert d.api("load_text", text_uri) == "some text ✓"
    obj = {"a": [1, 2, 3], "b": {"c": None, "d": "é"}}
    json_uri = d.api("store_json", obj)
    assert d.api("load_json", json_uri) == obj

    found = d.api("find_file", uri, timeout_sec=1)
    assert [(f["node_id"], f["size"]) for f in found] == [(d.node_id, src.stat().st_size)]
    assert d.api("get_node_id") == d.node_id

    assert d.api("get_channels") == []
    assert d.api("join_channel", "lab-one") is True
    assert d.api("join_channel", "lab-one") is False
    assert d.api("join_channel", "https://example.org/channel.json") is True
    assert d.api("get_channels") == ["lab-one", "https://example.org/channel.json"]
    assert d.api("leave_channel", "lab-one") is True
    assert d.api("leave_channel", "lab-one") is False
    assert d.api("get_channels") == ["https://example.org/channel.json"]

    unknown = f"sha1://{'0' * 40}/nothing.txt"
    assert d.api("load_file", unknown, timeout_sec=1) is None
    assert d.api("load_bytes", unknown, timeout_sec=1) is None
    assert d.api("load_text", unknown, timeout_sec=1) is None
    assert d.api("load_json", unknown, timeout_sec=1) is None
    assert d.api("find_file", unknown, timeout_sec=1) == []


def test_python_api_without_daemon(daemon_factory, tmp_path: Path) -> None:
    idle = daemon_factory.new("idle")  # never started
    uri = f"sha1://{EMPTY_SHA1}/x"
    calls = [
        ("load_file", (uri,)),
        ("store_text", ("x",)),
        ("get_node_id", ()),
        ("get_channels", ()),
        ("join_channel", ("c",)),
        ("find_file", (uri,)),
        ("load_bytes", (uri,)),
    ]
    for fn, args in calls:
        with pytest.raises(kachery_p2p.DaemonNotRunningError, match="kachery-p2p-start-daemon"):
            idle.api(fn, *args)
    # a stale token file (daemon killed) is the same situation
    idle.config_dir.mkdir(parents=True)
    (idle.config_dir / "api-token").write_text("stale")
    with pytest.raises(kachery_p2p.DaemonNotRunningError, match="kachery-p2p-start-daemon"):
        idle.api("get_node_id")
    src = tmp_path / "f.txt"
    src.write_text("x")
    with pytest.raises(kachery_p2p.DaemonNotRunningError):
        idle.api("store_file", str(src))
