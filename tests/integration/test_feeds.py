"""Feeds on one real daemon through the Python API: the original's names and semantics, long-polling, bad input."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import environ_applied

import kachery_p2p as kp
from kachery_p2p.errors import InvalidUriError, UsageError


@pytest.fixture
def daemon(daemon_factory: Any) -> Any:
    handle = daemon_factory.start("feeds")
    with environ_applied(handle.env):
        yield handle


def test_create_append_read_with_positions(daemon: Any) -> None:
    feed = kp.create_feed("my-feed")
    assert feed.is_writeable() and not feed.is_snapshot()
    assert kp.get_feed_id("my-feed") == feed.get_feed_id()
    assert kp.get_feed_id("nobody") is None
    assert kp.load_feed("my-feed").get_feed_id() == feed.get_feed_id()
    assert feed.get_uri() == f"feed://{feed.get_feed_id()}"
    subfeed = feed.get_subfeed("main")
    assert subfeed.get_uri() == f"feed://{feed.get_feed_id()}/main"
    subfeed.append_messages([{"n": 0}, {"n": 1}])
    subfeed.append_message({"n": 2, "text": "ünïcode"})
    assert subfeed.get_num_local_messages() == 3
    assert subfeed.get_next_messages(wait_msec=0) == [{"n": 0}, {"n": 1}, {"n": 2, "text": "ünïcode"}]
    assert subfeed.get_position() == 3
    assert subfeed.get_next_messages(wait_msec=0) == []
    subfeed.set_position(1)
    assert subfeed.get_next_message(wait_msec=0) == {"n": 1}
    peek = subfeed.get_next_messages(wait_msec=0, max_num_messages=1, advance_position=False)
    assert peek == [{"n": 2, "text": "ünïcode"}]
    signed = kp.load_subfeed(subfeed.get_uri()).get_next_messages(wait_msec=0, signed=True)
    assert [m["body"]["messageNumber"] for m in signed] == [0, 1, 2]
    assert signed[1]["body"]["previousSignature"] == signed[0]["signature"]
    # A second name for the same feed is refused; get_feed_id(create=True) makes a new one.
    with pytest.raises(UsageError, match="already exists"):
        kp.create_feed("my-feed")
    other = kp.get_feed_id("other", create=True)
    assert other is not None and other != feed.get_feed_id()


def test_dict_named_subfeeds_hash_like_the_original(daemon: Any) -> None:
    feed = kp.create_feed()
    name = {"workspaceName": "default", "kind": "recordings"}
    expected = hashlib.sha1(json.dumps(name, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    subfeed = feed.get_subfeed(name)
    assert subfeed.get_subfeed_hash() == expected
    assert subfeed.get_uri() == f"feed://{feed.get_feed_id()}/~{expected}"
    subfeed.append_message({"action": "add"})
    same = kp.load_subfeed(subfeed.get_uri())
    assert same.get_subfeed_hash() == expected and same.get_next_messages(wait_msec=0) == [{"action": "add"}]
    watched = kp.watch_for_new_messages(
        {"w1": {"feedId": feed.get_feed_id(), "subfeedName": name, "position": 0},
         "w2": {"feedId": feed.get_feed_id(), "subfeedHash": expected, "position": 1}},
        wait_msec=0,
    )
    assert watched == {"w1": [{"action": "add"}], "w2": []}


def test_a_long_poll_returns_as_soon_as_a_message_is_appended(daemon: Any) -> None:
    subfeed = kp.create_feed().get_subfeed("live")
    result: dict[str, Any] = {}

    def reader() -> None:
        with environ_applied(daemon.env):
            result["messages"] = kp.load_subfeed(subfeed.get_uri()).get_next_messages(wait_msec=10_000)
            result["at"] = time.monotonic()

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.3)  # the reader is waiting in the daemon (nothing to poll for: it must be woken)
    appended = time.monotonic()
    subfeed.append_message({"hello": 1})
    thread.join(10)
    assert result["messages"] == [{"hello": 1}]
    assert result["at"] - appended < 0.5, f"woken after {result['at'] - appended:.3f} s"
    start = time.monotonic()
    subfeed.set_position(1)
    assert subfeed.get_next_messages(wait_msec=300) == []
    assert 0.25 < time.monotonic() - start < 3


def test_access_rules_and_delete(daemon: Any) -> None:
    feed = kp.create_feed("ruled")
    subfeed = feed.get_subfeed("jobs")
    node = "ab" * 32
    assert subfeed.get_access_rules() == {"rules": []}
    subfeed.grant_write_access(node)
    assert subfeed.get_access_rules() == {"rules": [{"nodeId": node, "write": True}]}
    subfeed.revoke_write_access(node)
    assert subfeed.get_access_rules() == {"rules": []}
    assert any(f["feedId"] == feed.get_feed_id() and f["names"] == ["ruled"] for f in kp.list_feeds())
    kp.delete_feed("ruled")
    assert kp.get_feed_id("ruled") is None
    assert all(f["feedId"] != feed.get_feed_id() for f in kp.list_feeds())


def test_bad_input_gets_one_clear_error(daemon: Any) -> None:
    subfeed = kp.create_feed().get_subfeed("x")
    with pytest.raises(UsageError, match="JSON object"):
        subfeed.append_message([1, 2])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="at most"):
        subfeed.append_message({"big": "x" * 40_000})
    with pytest.raises(InvalidUriError):
        kp.load_subfeed("feed://nothex/main")
    with pytest.raises(InvalidUriError):
        kp.load_subfeed(f"feed://{'a' * 64}")
    with pytest.raises(UsageError, match="not writeable"):
        kp.load_subfeed(f"feed://{'a' * 64}/main").append_message({"a": 1})
    with pytest.raises(UsageError, match="no feed named"):
        kp.load_feed("never-made")
    assert subfeed.get_num_local_messages() == 0


def test_commands_create_append_list_and_stream(daemon: Any) -> None:
    import shutil
    import signal
    import subprocess
    import sys

    created = daemon.run("create-feed", "cli-feed")
    assert created.returncode == 0, created.stderr
    uri = created.stdout.strip() + "/main"
    assert daemon.run("append-message", uri, '{"n": 1}').returncode == 0
    listed = daemon.run("feeds")
    assert created.stdout.strip() in listed.stdout and "owned" in listed.stdout and "1 messages" in listed.stdout
    script = shutil.which("kachery-p2p-print-messages", path=str(Path(sys.executable).parent))
    assert script is not None
    proc = subprocess.Popen([script, uri], env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"n": 1}
        assert daemon.run("append-message", uri, '{"n": 2}').returncode == 0
        assert json.loads(proc.stdout.readline()) == {"n": 2}  # streamed live, the command still running
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "Traceback" not in err
    bad = daemon.run("print-messages", "feed://nothex/main")
    assert bad.returncode == 2 and bad.stderr.startswith("Error:") and len(bad.stderr.splitlines()) == 1
    bad = daemon.run("append-message", uri, "[1")
    assert bad.returncode == 2 and "JSON object" in bad.stderr
