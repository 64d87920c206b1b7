"""The sans-IO request gate of a peer session (quic.session): auth first, channel updates, the limit."""

from __future__ import annotations

import pytest

from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic import messages
from kachery_p2p.quic.session import Authenticate, Refuse, RequestGate, Serve, UpdateChannels

HAS = {"op": "has", "sha1": "a" * 40}


def test_nothing_is_served_before_authentication() -> None:
    server, client = RequestGate(is_client=False), RequestGate(is_client=True)
    assert server.decide(HAS, authenticated=False) == Authenticate(HAS)  # taken as the auth message
    refused = client.decide(HAS, authenticated=False)
    assert isinstance(refused, Refuse) and refused.reply["code"] == "unauthenticated"
    assert server.incoming == client.incoming == 0


def test_channel_updates_pass_and_requests_are_limited() -> None:
    gate = RequestGate(is_client=False, max_incoming=2)
    update = gate.decide({"op": "channels", "nonce": "0" * 32, "channelProofs": []}, authenticated=True)
    assert isinstance(update, UpdateChannels)
    assert isinstance(gate.decide(HAS, True), Serve) and isinstance(gate.decide(HAS, True), Serve)
    busy = gate.decide(HAS, True)
    assert isinstance(busy, Refuse) and busy.reply == messages.error("busy", "too many requests at once")
    gate.finished()
    assert isinstance(gate.decide(HAS, True), Serve) and gate.refused_busy == 1


def test_a_malformed_request_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        RequestGate(is_client=False).decide({"op": "nonsense"}, authenticated=True)
