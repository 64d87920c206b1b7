"""Feeds between two and three real daemons: live reads, catching up after being offline, submission by
access rules, snapshots. (Forged and reordered logs from a hostile peer: test_feeds_hostile.py.)"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import environ_applied
from helpers import peer_entry, udp_port, wait_until

import kachery_p2p as kp
from kachery_p2p.client.http import ControlClient
from kachery_p2p.config import ClientConfig
from kachery_p2p.errors import FeedPermissionError
from kachery_p2p.feeds.names import parse_feed_uri, subfeed_hash

CONNECT_TIMEOUT = 30.0


def start_connected(daemon_factory: Any, labels: list[str]) -> tuple[list[Any], str]:
    """Daemons sharing a fresh channel, each bootstrapped to the ones before it, all connected."""
    channel = f"feeds-{uuid.uuid4().hex[:12]}"
    daemons: list[Any] = []
    for label in labels:
        args = ["-v"]
        for earlier in daemons:
            args += ["--bootstrap", f"127.0.0.1:{udp_port(earlier)}"]
        daemon = daemon_factory.start(label, args)
        assert daemon.run("join-channel", channel).returncode == 0
        daemons.append(daemon)
    for x in daemons:
        for y in daemons:
            if x is not y:
                connect_wait(x, y, channel)
    return daemons, channel


def connect_wait(x: Any, y: Any, channel: str) -> None:
    node_id = y.node_id

    def ready() -> bool:
        entry = peer_entry(x, node_id)
        return entry is not None and channel in entry.get("channels", [])

    wait_until(ready, CONNECT_TIMEOUT, f"{x.label} to share {channel} with {y.label}")


def on(daemon: Any, fn: Callable[[], Any]) -> Any:
    with environ_applied(daemon.env):
        return fn()


def control(daemon: Any) -> ControlClient:
    """A client of ``daemon``'s control endpoint that does not read os.environ (safe in threads)."""
    env = daemon.env
    return ControlClient(ClientConfig(Path(env["KACHERY_P2P_CONFIG_DIR"]), int(env["KACHERY_P2P_API_PORT"])))


class Reader(threading.Thread):
    """Waits on a daemon for the next messages of a subfeed (a long-poll /feed/watch, as
    Subfeed.get_next_messages sends it) and notes when they arrived."""

    def __init__(self, daemon: Any, uri: str, position: int = 0, wait_msec: int = 10_000) -> None:
        super().__init__(daemon=True)
        self.client, self.position, self.wait_msec = control(daemon), position, wait_msec
        parsed = parse_feed_uri(uri)
        self.watch = {"feedId": parsed.feed_id, "subfeedHash": subfeed_hash(parsed.subfeed_name or "")}
        self.messages: list[Any] = []
        self.at = 0.0

    def run(self) -> None:
        payload = {"watches": {"w": {**self.watch, "position": self.position}}, "waitMsec": self.wait_msec}
        self.messages = self.client.post_json("/feed/watch", payload, timeout=60)["messages"]["w"]
        self.at = time.monotonic()


def read_all(daemon: Any, uri: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Messages 0..count-1 of the subfeed on ``daemon``, waiting (long-polling) until all arrived."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    with environ_applied(daemon.env):
        subfeed = kp.load_subfeed(uri)
        while len(got) < count and time.monotonic() < deadline:
            got += subfeed.get_next_messages(wait_msec=2000)
    assert len(got) == count, f"{daemon.label} has {len(got)} of {count} messages:\n{daemon.log_text()[-3000:]}"
    return got


@pytest.fixture
def trio(daemon_factory: Any) -> Iterator[list[Any]]:
    daemons, _channel = start_connected(daemon_factory, ["fa", "fb", "fc"])
    yield daemons


def test_a_feed_created_on_a_is_read_live_on_b_and_c(trio: list[Any]) -> None:
    a, b, c = trio
    subfeed = on(a, lambda: kp.create_feed("live").get_subfeed({"workspace": "w1"}))
    on(a, lambda: subfeed.append_message({"n": 0}))
    uri = subfeed.get_uri()
    # B and C follow the subfeed (the first read subscribes), then wait for the next message.
    assert read_all(b, uri, 1) == [{"n": 0}] and read_all(c, uri, 1) == [{"n": 0}]
    latencies = []
    for n in range(1, 6):
        readers = [Reader(b, uri, position=n), Reader(c, uri, position=n)]
        for reader in readers:
            reader.start()
        time.sleep(0.2)  # both readers are waiting in their daemons
        appended = time.monotonic()
        on(a, lambda n=n: subfeed.append_message({"n": n}))
        for reader in readers:
            reader.join(15)
            assert reader.messages == [{"n": n}]
            latencies.append(reader.at - appended)
    # Pushed, not polled: tens of milliseconds (generous bound for a loaded 2-core machine).
    assert sorted(latencies)[len(latencies) // 2] < 0.1, latencies
    assert max(latencies) < 1.0, latencies
    # B and C hold verified copies with the owner's signatures.
    signed_b = on(b, lambda: kp.load_subfeed(uri).get_next_messages(wait_msec=0, signed=True))
    signed_a = on(a, lambda: kp.load_subfeed(uri).get_next_messages(wait_msec=0, signed=True))
    assert signed_b == signed_a and len(signed_b) == 6
    assert not on(b, lambda: kp.load_feed(f"feed://{subfeed.get_feed().get_feed_id()}").is_writeable())


def test_b_offline_while_a_appends_1000_then_catches_up(daemon_factory: Any) -> None:
    (a, b), channel = start_connected(daemon_factory, ["oa", "ob"])
    subfeed = on(a, lambda: kp.create_feed().get_subfeed("log"))
    on(a, lambda: subfeed.append_message({"i": -1}))
    uri = subfeed.get_uri()
    assert read_all(b, uri, 1) == [{"i": -1}]
    b.stop()
    on(a, lambda: subfeed.append_messages([{"i": i, "pad": "x" * 50} for i in range(1000)]))
    b.start(["-v", "--bootstrap", f"127.0.0.1:{udp_port(a)}"])
    connect_wait(b, a, channel)
    got = read_all(b, uri, 1001, timeout=60)
    assert [m["i"] for m in got] == list(range(-1, 1000))
    assert on(b, lambda: kp.load_subfeed(uri).get_num_local_messages()) == 1001


def test_submission_follows_the_access_rules(daemon_factory: Any) -> None:
    (a, b), _channel = start_connected(daemon_factory, ["sa", "sb"])
    subfeed = on(a, lambda: kp.create_feed("jobs").get_subfeed("queue"))
    uri = subfeed.get_uri()
    with pytest.raises(FeedPermissionError, match="refused"):
        on(b, lambda: kp.load_subfeed(uri).submit_message({"job": 1}))
    assert on(a, lambda: subfeed.get_num_local_messages()) == 0
    on(a, lambda: subfeed.grant_write_access(b.node_id))
    on(b, lambda: kp.load_subfeed(uri).submit_messages([{"job": 2}, {"job": 3}]))
    assert on(a, lambda: kp.load_subfeed(uri).get_next_messages(wait_msec=0)) == [{"job": 2}, {"job": 3}]
    assert read_all(b, uri, 2) == [{"job": 2}, {"job": 3}]
    on(a, lambda: subfeed.revoke_write_access(b.node_id))
    with pytest.raises(FeedPermissionError):
        on(b, lambda: kp.load_subfeed(uri).submit_message({"job": 4}))
    assert on(a, lambda: subfeed.get_num_local_messages()) == 2


def test_snapshot_round_trip_across_nodes(daemon_factory: Any) -> None:
    (a, b), _channel = start_connected(daemon_factory, ["pa", "pb"])
    feed = on(a, lambda: kp.create_feed())
    on(a, lambda: feed.get_subfeed("main").append_messages([{"k": i} for i in range(5)]))
    on(a, lambda: feed.get_subfeed({"d": 1}).append_message({"dict": True}))
    snapshot = on(a, lambda: feed.create_snapshot(["main", {"d": 1}]))
    assert snapshot.is_snapshot() and snapshot.get_uri().startswith("sha1://")
    copy = on(b, lambda: kp.load_feed(snapshot.get_uri()))
    assert copy.is_snapshot() and not copy.is_writeable() and copy.get_feed_id() == feed.get_feed_id()
    main = copy.get_subfeed("main")
    assert on(b, lambda: main.get_next_messages()) == [{"k": i} for i in range(5)]
    sub_uri = copy.get_subfeed({"d": 1}).get_uri()
    assert "?subfeedName=" in sub_uri
    assert on(b, lambda: kp.load_subfeed(sub_uri).get_next_messages()) == [{"dict": True}]


def test_a_copy_holder_serves_a_peer_that_cannot_reach_the_owner(daemon_factory: Any) -> None:
    """A - B - C in a line (C knows only B): C follows A's subfeed through B's verified copy, live."""
    (a, b), channel = start_connected(daemon_factory, ["la", "lb"])
    c = daemon_factory.start("lc", ["-v", "--bootstrap", f"127.0.0.1:{udp_port(b)}"])
    assert c.run("join-channel", channel).returncode == 0
    connect_wait(c, b, channel)
    subfeed = on(a, lambda: kp.create_feed().get_subfeed("chain"))
    on(a, lambda: subfeed.append_message({"n": 0}))
    uri = subfeed.get_uri()
    assert read_all(b, uri, 1) == [{"n": 0}]
    assert read_all(c, uri, 1) == [{"n": 0}]
    reader = Reader(c, uri, position=1)
    reader.start()
    on(a, lambda: subfeed.append_message({"n": 1}))
    reader.join(15)
    assert reader.messages == [{"n": 1}]
    assert peer_entry(c, a.node_id) is None  # it really came through B
