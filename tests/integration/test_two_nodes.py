"""Two and three real daemons on loopback share files over QUIC: CLI and Python API, sha1 checked.

Every daemon runs with ``--port 0`` (a free UDP port, learned from ``kachery-p2p-node-info --json``)
and without LAN discovery, except in the LAN test, which announces on 127.0.0.1 only. Connectivity is
awaited by polling with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from helpers import peer_entry, udp_port, wait_until

CHUNK = 20_000_000
CONNECT_TIMEOUT = 30.0
EMPTY_SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


class Daemon(Protocol):
    """What these tests use of conftest's daemon handle."""

    label: str
    storage_dir: Path

    @property
    def node_id(self) -> str: ...
    def run(self, command: str, *args: str, **kwargs: Any) -> Any: ...
    def run_many(self, commands: Sequence[Sequence[str]], **kwargs: Any) -> list[Any]: ...
    def api(self, fn_name: str, *args: Any, **kwargs: Any) -> Any: ...
    def log_text(self) -> str: ...


class Factory(Protocol):
    def start(self, label: str = "a", extra_args: Sequence[str] = ()) -> Any: ...


# ---- helpers -------------------------------------------------------------------------------------


def unique_channel(prefix: str = "ch") -> str:
    """A channel name no other test (or daemon on this machine) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"




def bootstrap_args(*daemons: Daemon) -> list[str]:
    args: list[str] = []
    for daemon in daemons:
        args += ["--bootstrap", f"127.0.0.1:{udp_port(daemon)}"]
    return args






def wait_for_channel_peer(
    daemon: Daemon, other: Daemon, channel: str, timeout: float = CONNECT_TIMEOUT
) -> dict[str, Any]:
    """Wait until ``daemon`` lists ``other`` as a peer sharing ``channel``; its peers entry."""
    other_id = other.node_id

    def ready() -> dict[str, Any] | None:
        entry = peer_entry(daemon, other_id)
        return entry if entry is not None and channel in entry.get("channels", []) else None

    entry: dict[str, Any] = wait_until(ready, timeout, f"{daemon.label} to share {channel!r} with {other.label}")
    return entry


def join(channel: str, *daemons: Daemon) -> None:
    for daemon in daemons:
        result = daemon.run("join-channel", channel)
        assert result.returncode == 0, result.stderr


def write_random(path: Path, size: int, seed: int = 0) -> bytes:
    """Random-looking bytes (fast for tens of MB), written to ``path``."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048 + os.urandom(4096)
    reps, extra = divmod(size, len(block))
    # Make every 64 KiB distinct so that bytes served from the wrong offset cannot hash right.
    data = bytearray(block * reps + block[:extra])
    for offset in range(0, size, 65536):
        data[offset : offset + 16] = hashlib.md5(f"{seed}:{offset}".encode()).digest()[: min(16, size - offset)]
    raw = bytes(data[:size])
    path.write_bytes(raw)
    return raw


def sha1_file(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def store(daemon: Daemon, path: Path) -> str:
    result = daemon.run("store", str(path))
    assert result.returncode == 0, result.stderr
    uri = str(result.stdout.strip())
    assert uri.startswith("sha1://")
    return uri


def load_cli(daemon: Daemon, uri: str, *args: str) -> Path:
    result = daemon.run("load", uri, *args, timeout=180.0)
    assert result.returncode == 0, f"load failed: {result.stderr}\n--- log ---\n{daemon.log_text()}"
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return Path(lines[0])


def in_store(daemon: Daemon, path: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(daemon.storage_dir).resolve())


def find_json(daemon: Daemon, uri: str, timeout: float = 5.0) -> tuple[int, list[dict[str, Any]], str]:
    result = daemon.run("find", uri, "--timeout", str(timeout))
    found = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.returncode, found, result.stderr


@pytest.fixture
def pair(daemon_factory: Factory) -> tuple[Daemon, Daemon, str]:
    """A and B connected (B dialed A) and sharing a fresh channel."""
    channel = unique_channel()
    a = daemon_factory.start("alpha", ["-v"])
    join(channel, a)
    b = daemon_factory.start("beta", ["-v", *bootstrap_args(a)])
    join(channel, b)
    wait_for_channel_peer(b, a, channel)
    wait_for_channel_peer(a, b, channel)
    return a, b, channel


# ---- two daemons ---------------------------------------------------------------------------------


def test_peers_lists_the_other_node(pair: tuple[Daemon, Daemon, str]) -> None:
    a, b, channel = pair
    result = b.run("peers", "--json")
    assert result.returncode == 0, result.stderr
    peers = [json.loads(line) for line in result.stdout.splitlines()]
    (entry,) = [p for p in peers if p["nodeId"] == a.node_id]
    assert entry["label"] == "alpha"
    assert entry["channels"] == [channel]
    assert entry["address"] == f"127.0.0.1:{udp_port(a)}"
    assert entry["initiator"] == "us"
    assert entry["rttMs"] is None or entry["rttMs"] >= 0
    # And the other way round: A knows B by the key B proved in band, with B's label.
    (back,) = [p for p in a.api("get_peers") if p["nodeId"] == b.node_id]
    assert back["label"] == "beta" and back["channels"] == [channel] and back["initiator"] == "peer"
    # The plain listing mentions the label and the channel.
    text = b.run("peers")
    assert text.returncode == 0 and "alpha" in text.stdout and channel in text.stdout


def test_store_on_a_load_on_b_by_cli(pair: tuple[Daemon, Daemon, str], tmp_path: Path) -> None:
    a, b, _channel = pair
    data = write_random(tmp_path / "data.bin", 3_000_000 + 17, seed=1)
    sha1 = hashlib.sha1(data).hexdigest()
    uri = store(a, tmp_path / "data.bin")
    assert uri == f"sha1://{sha1}/data.bin"

    code, found, stderr = find_json(b, uri)
    assert code == 0, stderr
    assert [(f["nodeId"], f["size"], f["local"]) for f in found] == [(a.node_id, len(data), False)]
    assert found[0]["label"] == "alpha"

    path = load_cli(b, uri)
    assert in_store(b, path)
    assert sha1_file(path) == sha1
    # The second load is local and prints the same path.
    assert load_cli(b, uri) == path

    # cat streams the bytes (now from B's own store).
    cat = b.run("cat", uri, text=False)
    assert cat.returncode == 0 and cat.stdout == data


def test_cat_streams_a_remote_file(pair: tuple[Daemon, Daemon, str], tmp_path: Path) -> None:
    a, b, _channel = pair
    data = write_random(tmp_path / "cat.bin", 1_500_000, seed=2)
    uri = store(a, tmp_path / "cat.bin")
    cat = b.run("cat", uri, "--start", "100", "--end", "200100", text=False)
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == data[100:200100]


def test_store_on_a_load_on_b_by_python(pair: tuple[Daemon, Daemon, str], tmp_path: Path) -> None:
    a, b, _channel = pair
    data = write_random(tmp_path / "py.bin", 2_500_000, seed=3)
    sha1 = hashlib.sha1(data).hexdigest()
    uri = a.api("store_file", str(tmp_path / "py.bin"))

    found = b.api("find_file", uri)
    assert [(f["nodeId"], f["size"], f["local"]) for f in found] == [(a.node_id, len(data), False)]

    assert b.api("load_bytes", uri, 1000, 250_000) == data[1000:250_000]
    path = b.api("load_file", uri)
    assert path is not None and in_store(b, Path(path)) and sha1_file(path) == sha1
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    assert b.api("load_file", uri, str(dest)) == str(dest)
    assert dest.read_bytes() == data

    # Now both have it: find on B lists itself (local) and A.
    found = b.api("find_file", uri)
    assert sorted((f["nodeId"], f["local"]) for f in found) == sorted([(b.node_id, True), (a.node_id, False)])


def test_load_bytes_of_a_remote_file_by_range(pair: tuple[Daemon, Daemon, str], tmp_path: Path) -> None:
    a, b, _channel = pair
    data = write_random(tmp_path / "r.bin", 700_001, seed=4)
    uri = a.api("store_bytes", data, "r.bin")
    assert b.api("load_bytes", uri, 699_000, None) == data[699_000:]
    assert b.api("load_bytes", uri, 0, 10) == data[:10]
    assert b.api("load_bytes", uri) == data


def test_file_above_one_chunk_with_and_without_manifest(pair: tuple[Daemon, Daemon, str], tmp_path: Path) -> None:
    a, b, _channel = pair
    sizes = {"with": CHUNK + 1_000_001, "without": 2 * CHUNK + 3}
    for name, size in sizes.items():
        data = write_random(tmp_path / f"{name}.bin", size, seed=size)
        sha1 = hashlib.sha1(data).hexdigest()
        uri = store(a, tmp_path / f"{name}.bin")
        assert "?manifest=" in uri
        if name == "without":
            # B must get the manifest from A (op "manifest") before it can verify chunk by chunk.
            uri = f"sha1://{sha1}/{name}.bin"
        path = load_cli(b, uri)
        assert in_store(b, path)
        assert os.path.getsize(path) == size
        assert sha1_file(path) == sha1, name


def test_empty_file(pair: tuple[Daemon, Daemon, str], tmp_path: Path) -> None:
    a, b, _channel = pair
    (tmp_path / "empty").write_bytes(b"")
    uri = store(a, tmp_path / "empty")
    assert uri == f"sha1://{EMPTY_SHA1}/empty"
    path = load_cli(b, uri)
    assert path.read_bytes() == b""
    assert b.api("load_bytes", uri) == b""
    found = b.api("find_file", uri)
    assert {(f["nodeId"], f["size"]) for f in found} >= {(a.node_id, 0)}


def test_file_nobody_has(pair: tuple[Daemon, Daemon, str]) -> None:
    _a, b, _channel = pair
    uri = "sha1://" + hashlib.sha1(b"nobody stored this " + os.urandom(8)).hexdigest() + "/x.bin"
    started = time.monotonic()
    result = b.run("load", uri, "--timeout", "1")
    elapsed = time.monotonic() - started
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and error_lines[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 15, elapsed

    code, found, stderr = find_json(b, uri, timeout=1.0)
    assert code == 3 and found == [] and stderr.startswith("Error:")
    assert b.api("load_file", uri, timeout_sec=1.0) is None
    assert b.api("load_bytes", uri, timeout_sec=1.0) is None


def test_concurrent_loads_of_one_file(pair: tuple[Daemon, Daemon, str], tmp_path: Path) -> None:
    a, b, _channel = pair
    data = write_random(tmp_path / "c.bin", 9_000_000, seed=5)
    uri = store(a, tmp_path / "c.bin")
    results = b.run_many([("load", uri)] * 4, timeout=180.0)
    paths = {r.stdout.strip() for r in results}
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len(paths) == 1
    assert sha1_file(paths.pop()) == hashlib.sha1(data).hexdigest()


# ---- three daemons ---------------------------------------------------------------------------------


def test_three_daemons(daemon_factory: Factory, tmp_path: Path) -> None:
    channel = unique_channel()
    a = daemon_factory.start("alpha", ["-v"])
    join(channel, a)
    b = daemon_factory.start("beta", ["-v", *bootstrap_args(a)])
    join(channel, b)
    c = daemon_factory.start("gamma", ["-v", *bootstrap_args(a, b)])
    join(channel, c)
    for x, y in ((c, a), (c, b), (b, a), (a, c), (b, c)):
        wait_for_channel_peer(x, y, channel)

    # On B only: C finds B (not A) and loads it.
    only_b = write_random(tmp_path / "b.bin", 5_000_000, seed=6)
    uri = store(b, tmp_path / "b.bin")
    code, found, stderr = find_json(c, uri)
    assert code == 0, stderr
    assert [(f["nodeId"], f["label"], f["size"]) for f in found] == [(b.node_id, "beta", len(only_b))]
    path = load_cli(c, uri)
    assert sha1_file(path) == hashlib.sha1(only_b).hexdigest()

    # On A and B: C finds both and loads from them.
    both = write_random(tmp_path / "ab.bin", 12_000_000, seed=7)
    uri_ab = store(a, tmp_path / "ab.bin")
    assert store(b, tmp_path / "ab.bin") == uri_ab
    code, found, stderr = find_json(c, uri_ab)
    assert code == 0, stderr
    assert sorted(f["nodeId"] for f in found) == sorted([a.node_id, b.node_id])
    assert all(f["size"] == len(both) for f in found)
    path_ab = c.api("load_file", uri_ab)
    assert path_ab is not None and sha1_file(path_ab) == hashlib.sha1(both).hexdigest()

    # A now finds the file on B and C.
    found_a = a.api("find_file", uri)
    assert sorted(f["nodeId"] for f in found_a) == sorted([b.node_id, c.node_id])


# ---- LAN discovery -----------------------------------------------------------------------------------

LAN_ARGS = ["--lan-discovery", "--lan-interface", "127.0.0.1"]


def test_two_daemons_find_each_other_by_lan_discovery_alone(daemon_factory: Factory, tmp_path: Path) -> None:
    channel = unique_channel("lan")
    a = daemon_factory.start("lan-a", ["-v", *LAN_ARGS])
    join(channel, a)
    b = daemon_factory.start("lan-b", ["-v", *LAN_ARGS])
    join(channel, b)
    wait_for_channel_peer(b, a, channel, timeout=45.0)
    wait_for_channel_peer(a, b, channel, timeout=45.0)

    data = write_random(tmp_path / "lan.bin", 1_000_003, seed=8)
    uri = store(a, tmp_path / "lan.bin")
    path = load_cli(b, uri)
    assert sha1_file(path) == hashlib.sha1(data).hexdigest()
    # One connection each way is enough: the peer list has A exactly once.
    assert [p["nodeId"] for p in b.api("get_peers")].count(a.node_id) == 1
