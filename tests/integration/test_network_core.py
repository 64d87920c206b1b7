"""Network-core behaviour across two daemons: goodbyes at stop (issue 10 #11)."""

from __future__ import annotations

import time
from typing import Any

from helpers import peer_entry, wait_until
from test_two_nodes import bootstrap_args, join, unique_channel, wait_for_channel_peer


def test_a_stopping_daemon_closes_its_connections(daemon_factory: Any) -> None:
    channel = unique_channel()
    a = daemon_factory.start("alpha", ["-v"])
    join(channel, a)
    b = daemon_factory.start("beta", ["-v", *bootstrap_args(a)])
    join(channel, b)
    wait_for_channel_peer(a, b, channel)
    b_id = b.node_id
    stopped_at = time.monotonic()
    assert b.stop() == 0
    # Without a CONNECTION_CLOSE, a would list b until the idle timeout (40 s and more).
    wait_until(lambda: peer_entry(a, b_id) is None, 5.0, "a to drop the stopped peer")
    assert time.monotonic() - stopped_at < 5.0


def test_sessions_opened_to_us_that_share_no_channel_are_closed(daemon_factory: Any) -> None:
    a = daemon_factory.new("alpha")
    a.env["KACHERY_P2P_UNUSED_SESSION_SEC"] = "2"
    a.start(["-v"])
    x = unique_channel()
    join(x, a)
    b = daemon_factory.start("beta", ["-v", *bootstrap_args(a)])
    join(unique_channel(), b)  # another channel: b's session to a is of no use to a
    wait_until(lambda: "closing the unused session" in a.log_text(), 20.0, "a to close b's unused session")
    c = daemon_factory.start("gamma", ["-v", *bootstrap_args(a)])
    join(x, c)
    wait_for_channel_peer(a, c, x)
    time.sleep(4.0)  # past the grace: a channel peer's session stays
    assert peer_entry(a, c.node_id) is not None
