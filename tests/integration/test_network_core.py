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
