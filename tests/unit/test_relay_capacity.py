"""A relay can hold as many sessions as --relay-max-nodes promises (the connection table was capped at 512,
so 1,000 registrations could never be reached: the relay-load bench showed 512 of 1,000)."""

from __future__ import annotations

from pathlib import Path

from kachery_p2p.config import DaemonConfig
from kachery_p2p.daemon.network import links_allowed
from kachery_p2p.relay.limits import RelayLimits


def _config(relay: bool, max_nodes: int) -> DaemonConfig:
    return DaemonConfig(config_dir=Path("/nonexistent"), storage_dir=Path("/nonexistent"), relay_mode=relay,
                        relay_limits=RelayLimits(max_registrations=max_nodes))


def test_a_relay_has_room_for_every_node_it_admits() -> None:
    for max_nodes in (10, 1000, 10_000):
        assert links_allowed(_config(True, max_nodes)) >= max_nodes + 256


def test_a_plain_node_keeps_the_default_table() -> None:
    assert links_allowed(_config(False, 10_000)) == 512
