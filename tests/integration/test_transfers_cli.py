"""``kachery-p2p-transfers`` and ``kachery-p2p-cancel`` through the CLI, on a download slowed by a real relay.

The two nodes reach each other only through a relay daemon (no hole punching, no LAN discovery) whose
per-node rate limit keeps a 60 MB download running for several seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

MB = 1_000_000
RELAY_RATE_MB = "10"
SIZE = 60 * MB  # three chunks
CHUNK = 20 * MB


def slow_pair(factory: Any) -> tuple[Any, Any, str, Any]:
    """Nodes a and b in one channel, connected only through a rate-limited relay (returned last)."""
    relay = factory.start("relay", ["--relay", "--relay-rate", RELAY_RATE_MB])
    port = json.loads(relay.run("node-info", "--json", check=True).stdout)["udpPort"]
    via = ["-v", "--no-hole-punching", "--bootstrap", f"{relay.node_id}@127.0.0.1:{port}"]
    channel = f"tr-{uuid.uuid4().hex[:8]}"
    a = factory.start("a", via)
    b = factory.start("b", via)
    for node in (a, b):
        node.run("join-channel", channel, check=True)

    def connected() -> bool:
        return any(channel in p.get("channels", []) for p in b.api("get_peers") if p["nodeId"] == a.node_id)

    wait_until(connected, 30.0, "b to reach a through the relay", 0.2)
    return a, b, channel, relay


def transfers(node: Any) -> dict[str, Any]:
    result = node.run("transfers", "--json")
    assert result.returncode == 0, result.stderr
    snapshot: dict[str, Any] = json.loads(result.stdout)
    return snapshot


def test_transfers_list_and_cancel_keeps_verified_chunks(daemon_factory: Any, tmp_path: Path) -> None:
    a, b, _channel, _relay = slow_pair(daemon_factory)
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(SIZE))
    uri = a.run("store", str(source), check=True).stdout.strip()
    sha1 = uri.split("//")[1].split("/")[0]
    assert b.run("cancel", uri).returncode == 3  # nothing to cancel yet

    load = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "kachery-p2p-load"), uri],
        env=b.env, cwd=b.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def downloading() -> dict[str, Any] | None:
            found = [d for d in transfers(b)["downloads"] if d["sha1"] == sha1 and d["bytes"] > 0]
            return found[0] if found else None

        first = wait_until(downloading, 30.0, "the download to show in kachery-p2p-transfers", 0.2)
        assert first["size"] == SIZE and first["providers"] == [a.node_id] and first["paths"] == ["relayed"]
        later = wait_until(
            lambda: (d := downloading()) and d["bytes"] > first["bytes"] + 2 * MB and d, 30.0, "progress", 0.2
        )
        assert later["rate"] > 0
        text = b.run("transfers", check=True).stdout
        assert "down" in text and sha1 in text and "MB/s" in text and "relayed" in text

        # The provider sees the upload, with the requesting peer and the path.
        uploads = wait_until(lambda: transfers(a)["uploads"], 10.0, "the upload on a", 0.2)
        assert uploads[0]["peer"] == b.node_id and uploads[0]["sha1"] == sha1 and uploads[0]["path"] == "relayed"
        assert "up" in a.run("transfers", check=True).stdout

        wait_until(lambda: len(sidecar(b, sha1).get("verified", [])) >= 1, 60.0, "a verified chunk", 0.1)
        cancelled = b.run("cancel", uri)
        assert cancelled.returncode == 0 and "Cancelled" in cancelled.stdout, cancelled.stderr
        _out, err = load.communicate(timeout=15)
        assert load.returncode != 0 and "cancelled" in err, err
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    snapshot = transfers(b)
    assert snapshot["downloads"] == []
    assert snapshot["recent"][0]["sha1"] == sha1 and snapshot["recent"][0]["state"] == "cancelled"
    record = sidecar(b, sha1)
    assert record.get("verified"), "the verified chunks were not kept"
    assert "cancelled the download" in b.log_text()

    # A later load resumes from the verified chunks (its progress starts there); then it is cancelled too.
    verified = len(record["verified"])
    again = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "kachery-p2p-load"), "--json", uri],
        env=b.env, cwd=b.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert again.stdout is not None
        for line in again.stdout:
            message = json.loads(line)
            if message.get("type") == "progress" and message.get("bytesLoaded"):
                assert message["bytesLoaded"] >= verified * CHUNK, (message, verified)
                break
        else:
            pytest.fail(f"no progress from the resumed load: {again.stderr.read() if again.stderr else ''}")
        wait_until(lambda: b.run("cancel", uri).returncode == 0, 10.0, "cancelling the resumed load", 0.2)
        assert again.wait(15) != 0
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()


def sidecar(node: Any, sha1: str) -> dict[str, Any]:
    path = Path(node.storage_dir) / "tmp" / f"partial-{sha1}.json"
    try:
        record: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return record
