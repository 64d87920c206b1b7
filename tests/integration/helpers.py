"""Helpers shared by the multi-daemon integration tests (polling with deadlines, peers, ports)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pytest

T = TypeVar("T")


class RunsCommands(Protocol):
    def run(self, command: str, *args: str, **kwargs: Any) -> Any: ...
    def api(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def udp_port(daemon: RunsCommands) -> int:
    """The daemon's QUIC port, from ``kachery-p2p-node-info --json``."""
    result = daemon.run("node-info", "--json")
    assert result.returncode == 0, result.stderr
    port = json.loads(result.stdout)["udpPort"]
    assert isinstance(port, int) and port > 0
    return port


def peer_entry(daemon: RunsCommands, node_id: str) -> dict[str, Any] | None:
    """The daemon's ``get_peers`` entry for ``node_id``, or None."""
    for peer in daemon.api("get_peers"):
        if peer.get("nodeId") == node_id:
            return dict(peer)
    return None
