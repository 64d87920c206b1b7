"""Picking the congestion controller: KACHERY_P2P_CONGESTION_CONTROL=reno|cubic|bbr (bbr by default)."""

from __future__ import annotations

import pytest
from aioquic.quic.congestion.cubic import CubicCongestionControl
from aioquic.quic.congestion.reno import RenoCongestionControl

from kachery_p2p.daemon.endpoint import QuicEndpoint
from kachery_p2p.errors import ConfigError
from kachery_p2p.quic.bbr import NAME, BbrCongestionControl
from kachery_p2p.quic.cc_pacer import ControllerPacer
from kachery_p2p.quic.flow import KacheryQuicConnection
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.quic.settings import congestion_control_from_environ, quic_configuration


def test_the_environment_picks_the_controller() -> None:
    assert congestion_control_from_environ({}) == NAME
    assert congestion_control_from_environ({"KACHERY_P2P_CONGESTION_CONTROL": "reno"}) == "reno"
    assert congestion_control_from_environ({"KACHERY_P2P_CONGESTION_CONTROL": "cubic"}) == "cubic"
    assert congestion_control_from_environ({"KACHERY_P2P_CONGESTION_CONTROL": " BBR "}) == NAME
    with pytest.raises(ConfigError, match="KACHERY_P2P_CONGESTION_CONTROL='vegas' is not a congestion controller"):
        congestion_control_from_environ({"KACHERY_P2P_CONGESTION_CONTROL": "vegas"})


@pytest.mark.parametrize(
    ("name", "cls"), [("reno", RenoCongestionControl), ("cubic", CubicCongestionControl), (NAME, BbrCongestionControl)]
)
def test_connections_run_the_chosen_controller(name: str, cls: type) -> None:
    config = quic_configuration(NodeIdentity.generate(), is_client=True, congestion_control=name)
    conn = KacheryQuicConnection(configuration=config)
    assert isinstance(conn._loss._cc, cls)
    # Only the model-based controller sets its own pacing rate.
    assert isinstance(conn._loss._pacer, ControllerPacer) == (cls is BbrCongestionControl)


def test_the_endpoint_reads_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KACHERY_P2P_CONGESTION_CONTROL", "reno")
    endpoint = QuicEndpoint(NodeIdentity.generate(), on_incoming=lambda link: None)
    assert endpoint.server_config.congestion_control_algorithm == "reno"
    monkeypatch.delenv("KACHERY_P2P_CONGESTION_CONTROL")
    endpoint = QuicEndpoint(NodeIdentity.generate(), on_incoming=lambda link: None)
    assert endpoint.server_config.congestion_control_algorithm == NAME
    assert endpoint.config_for(True, ("192.0.2.1", 1), relayed=False).congestion_control_algorithm == NAME
