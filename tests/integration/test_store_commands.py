"""``kachery-p2p-ls``, ``-du``, ``-rm`` and ``kachery-p2p-store -`` through the CLI against real daemons."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from helpers import wait_until

MB = 1_000_000


def _ls(daemon: Any) -> list[dict[str, Any]]:
    result = daemon.run("ls", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_ls_du_rm_and_store_from_stdin(daemon_factory: Any, tmp_path: Path) -> None:
    a = daemon_factory.start("a")
    small = tmp_path / "small.txt"
    small.write_text("hello store\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(21 * MB))  # over one chunk: it gets a manifest
    small_uri = a.run("store", str(small), check=True).stdout.strip()
    big_uri = a.run("store", str(big), check=True).stdout.strip()
    assert "?manifest=" in big_uri

    piped = a.run("store", "-", "--basename", "notes.txt", input="from a pipe\n", check=True).stdout.strip()
    assert piped.endswith("/notes.txt"), piped
    assert a.run("cat", piped, check=True).stdout == "from a pipe\n"
    unnamed = a.run("store", "-", input="no name\n", check=True).stdout.strip()
    assert "/" not in unnamed.removeprefix("sha1://"), unnamed

    entries = {e["sha1"]: e for e in _ls(a)}
    # Four files; the manifest of the big one is shown with it, not on its own line.
    assert len(entries) == 4, entries
    big_sha1 = big_uri.split("//")[1].split("/")[0]
    assert entries[big_sha1]["size"] == 21 * MB
    assert entries[big_sha1]["kind"] == "stored"
    assert entries[big_sha1]["uri"] == f"sha1://{big_sha1}?manifest={big_uri.split('manifest=')[1]}"
    assert all(e["accessed"] for e in entries.values())

    text = a.run("ls", check=True).stdout
    assert big_sha1 in text and "21.0 MB" in text and "stored" in text

    usage = json.loads(a.run("du", "--json", check=True).stdout)
    assert usage["files"] == 4 and usage["manifests"] == 1
    assert usage["storedBytes"] == 21 * MB + len("hello store\n") + len("from a pipe\n") + len("no name\n")
    assert "Files: 4" in a.run("du", check=True).stdout

    # Without --yes and without a terminal: refused, nothing removed.
    refused = a.run("rm", big_uri)
    assert refused.returncode == 2 and "--yes" in refused.stderr, refused.stderr
    assert len(_ls(a)) == 4

    removed = a.run("rm", "--yes", big_uri)
    assert removed.returncode == 0, removed.stderr
    assert "content" in removed.stdout and "manifest" in removed.stdout
    assert big_sha1 not in {e["sha1"] for e in _ls(a)}
    after = json.loads(a.run("du", "--json", check=True).stdout)
    assert after["files"] == 3 and after["manifests"] == 0
    # The store has no stray manifest left: every content file is one of the three listed.
    content = [p for p in (a.storage_dir / "sha1").rglob("*") if p.is_file() and len(p.name) == 40]
    assert len(content) == 3, content
    load = a.run("load", big_uri, "--timeout", "0.5")
    assert load.returncode == 3, load.stderr

    again = a.run("rm", "--yes", big_uri)
    assert again.returncode == 3 and "not in this node's store" in again.stderr
    bad = a.run("rm", "--yes", "not-a-uri")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert a.run("cat", small_uri, check=True).stdout == "hello store\n"


def test_rm_only_removes_from_this_node(daemon_factory: Any, tmp_path: Path) -> None:
    channel = f"ls-{uuid.uuid4().hex[:8]}"
    a = daemon_factory.start("a", ["-v"])
    a.run("join-channel", channel, check=True)
    port = json.loads(a.run("node-info", "--json", check=True).stdout)["udpPort"]
    b = daemon_factory.start("b", ["-v", "--bootstrap", f"{a.node_id}@127.0.0.1:{port}"])
    b.run("join-channel", channel, check=True)
    source = tmp_path / "shared.txt"
    source.write_text("shared between two\n")
    uri = a.run("store", str(source), check=True).stdout.strip()

    def loaded() -> bool:
        return b.run("load", uri, "--timeout", "2").returncode == 0

    wait_until(loaded, 30.0, "b to load the file from a", 0.2)
    # One INFO line each: the load on b, the file served on a (once b has been idle for a moment).
    assert "loaded sha1://" in b.log_text() and "MB/s) from 1 provider (direct)" in b.log_text()
    wait_until(lambda: "served sha1://" in a.log_text(), 10.0, "a's line for the file served", 0.2)
    assert b.run("rm", "--yes", uri).returncode == 0
    assert _ls(b) == []
    assert [e["uri"] for e in _ls(a)] == [uri.rsplit("/", 1)[0]]
    # B loads it again from A: removing is local only.
    assert b.run("load", uri, "--timeout", "5").returncode == 0
