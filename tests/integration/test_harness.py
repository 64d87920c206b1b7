"""conftest's daemons themselves: they talk only to loopback, as its docstring promises."""

from __future__ import annotations

import json
from typing import Any


def test_a_test_daemon_does_not_ask_the_router_for_a_port_mapping(daemon_factory: Any) -> None:
    """Before: the factory's environment lacked KACHERY_P2P_PORT_MAPPING=0, so each test daemon tried PCP,
    NAT-PMP and UPnP on this machine's network, and its exit waited for the UPnP search."""
    daemon = daemon_factory.start("a")
    result = daemon.run("node-info", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["portMapping"] is None
