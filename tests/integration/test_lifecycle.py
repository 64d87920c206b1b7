"""Starting, stopping and restarting a daemon; serving a store laid out by the original kachery."""

from __future__ import annotations

import hashlib
import json
import signal

import pytest


def test_second_start_with_same_config_dir_is_refused(daemon_factory) -> None:
    d = daemon_factory.start("a")
    token = d.token()
    second = d.run("start-daemon", "--label", "b", "--port", "0", "--no-lan-discovery", timeout=20)
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert second.stderr.splitlines()[0].startswith("Error:")
    assert len(second.stderr.splitlines()) == 1, second.stderr
    assert second.stdout == ""
    # the first daemon is untouched: same token, still serving authenticated requests
    assert d.proc is not None and d.proc.poll() is None
    assert d.token() == token
    assert d.api("get_channels") == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(daemon_factory, sig: int) -> None:
    d = daemon_factory.start("a")
    assert d.token_path.exists()
    assert d.stop(sig=sig) == 0, d.log_text()
    assert not d.token_path.exists()
    assert d.probe() is None
    assert "Traceback" not in d.log_text()


def test_stop_daemon_command(daemon_factory) -> None:
    d = daemon_factory.start("a")
    result = d.run("stop-daemon")
    assert result.returncode == 0, result.stderr
    assert d.wait_exit() == 0
    assert not d.token_path.exists()
    assert d.probe() is None
    assert "Traceback" not in d.log_text()


def test_restart_keeps_channels_and_node_id(daemon_factory) -> None:
    d = daemon_factory.start("a")
    node_id = d.node_id
    for name in ("alpha", "beta"):
        assert d.run("join-channel", name).returncode == 0
    assert d.stop() == 0
    d.start()
    assert d.node_id == node_id
    listed = d.run("get-channels")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["alpha", "beta"]
    info = json.loads(d.run("node-info", "--json").stdout)
    assert info["nodeId"] == node_id
    assert info["channels"] == ["alpha", "beta"]
    assert d.run("leave-channel", "alpha").returncode == 0
    assert d.stop() == 0
    d.start()
    assert d.run("get-channels").stdout.splitlines() == ["beta"]


def test_serves_a_store_laid_out_by_kachery_067(daemon_factory, tmp_path) -> None:
    d = daemon_factory.new("a")
    data = b"written by kachery 0.6.7\n" * 100
    sha1 = hashlib.sha1(data).hexdigest()
    folder = d.storage_dir / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6]
    folder.mkdir(parents=True)
    content = folder / sha1
    content.write_bytes(data)
    # the junk other kachery tools leave around
    (folder / f"{sha1}.hints.json").write_text(json.dumps({"files": [{"path": "/somewhere/else"}]}))
    (folder / f"{sha1}.lock").write_text("")
    (folder / f"{sha1}.copying.abc123").write_bytes(data[:10])
    other = "0" * 40
    (folder / other).write_bytes(b"not under its own prefix")
    (d.storage_dir / "tmp").mkdir()
    (d.storage_dir / "tmp" / "store.file.123.tmp").write_bytes(b"half")
    (d.storage_dir / "sha1" / "x" / "yz").mkdir(parents=True)
    before = content.stat()

    d.start()
    uri = f"sha1://{sha1}/old.txt"
    loaded = d.run("load", uri)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines() == [str(content)]
    found = d.run("find", uri)
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["size"] for line in found.stdout.splitlines()] == [len(data)]
    assert d.run("cat", uri, text=False).stdout == data
    # a file that sits in the right folder but is not content there is not served
    assert d.run("load", f"sha1://{other}/x", "--timeout", "1").returncode == 3
    after = content.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
