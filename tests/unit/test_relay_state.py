"""The relay's one state (relay.server.RelayState): registry, address map, expiry and limits together."""

from __future__ import annotations

from typing import Any

import pytest

from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.channels.rendezvous import encode_record
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.relay.frames import decode_relay_frame, encode_to_relay
from kachery_p2p.relay.limits import RelayLimits
from kachery_p2p.relay.server import RelayState

NOW = 1_700_000_000.0
ALICE = NodeIdentity.from_private_bytes(bytes(range(32)))
BOB = NodeIdentity.from_private_bytes(bytes(range(32, 64)))
CAROL = NodeIdentity.from_private_bytes(bytes(range(64, 96)))
LAB, OTHER = rendezvous_id("lab"), rendezvous_id("other")
A_ADDR, B_ADDR, C_ADDR = ("198.51.100.1", 40000), ("198.51.100.2", 40001), ("198.51.100.3", 40002)


def record(identity: NodeIdentity, ids: list[str], now: float = NOW, lifetime: float = 180.0) -> dict[str, Any]:
    return encode_record(identity, "x", ids, [], now, lifetime)


def relay(limits: RelayLimits | None = None) -> RelayState:
    state = RelayState(limits)
    assert state.publish(record(ALICE, [LAB]), A_ADDR, ALICE.node_id, NOW) == "198.51.100.1:40000"
    state.publish(record(BOB, [LAB]), B_ADDR, BOB.node_id, NOW)
    state.publish(record(CAROL, [OTHER]), C_ADDR, CAROL.node_id, NOW)
    return state


def test_frames_go_between_registered_nodes_that_share_a_channel() -> None:
    state = relay()
    out = state.receive_frame(encode_to_relay(BOB.node_id, b"quic"), A_ADDR, NOW + 1)
    assert out is not None
    data, to = out
    assert to == B_ADDR
    frame = decode_relay_frame(data)
    assert (frame.kind, frame.node_id, frame.payload) == ("from_relay", ALICE.node_id, b"quic")


def test_frames_are_bound_to_the_address_of_the_registered_session() -> None:
    state = relay()
    # From an address no session published from: dropped, whatever target it names.
    assert state.receive_frame(encode_to_relay(BOB.node_id, b"x"), ("192.0.2.1", 1), NOW) is None
    # Carol shares no channel with bob: no connect, no forwarding.
    assert state.receive_frame(encode_to_relay(BOB.node_id, b"x"), C_ADDR, NOW) is None
    with pytest.raises(RemoteProtocolError) as info:
        state.connect_target(CAROL.node_id, BOB.node_id, NOW)
    assert info.value.code == "not_authorized"
    assert state.connect_target(ALICE.node_id, BOB.node_id, NOW) == B_ADDR
    assert state.info()["dropped: unregistered source"] == 1 and state.info()["dropped: no shared channel"] == 1


def test_expired_records_stop_forwarding_and_are_removed_by_the_timer() -> None:
    state = relay()
    assert state.get_timer() == NOW + 180.0
    late = NOW + 181.0
    assert state.receive_frame(encode_to_relay(BOB.node_id, b"x"), A_ADDR, late) is None
    assert set(state.handle_timer(late)) == {ALICE.node_id, BOB.node_id, CAROL.node_id}
    assert state.info()["registered"] == 0 and state.get_timer() is None
    with pytest.raises(RemoteProtocolError):
        state.connect_target(ALICE.node_id, BOB.node_id, late)


def test_max_nodes_and_limits_apply() -> None:
    state = RelayState(RelayLimits(max_registrations=2, burst_bytes=4096, bytes_per_sec_per_node=1))
    state.publish(record(ALICE, [LAB]), A_ADDR, ALICE.node_id, NOW)
    state.publish(record(BOB, [LAB]), B_ADDR, BOB.node_id, NOW)
    with pytest.raises(RemoteProtocolError) as info:
        state.publish(record(CAROL, [LAB]), C_ADDR, CAROL.node_id, NOW)
    assert info.value.code == "busy"
    frame = encode_to_relay(BOB.node_id, b"y" * 1000)
    sent = [state.receive_frame(frame, A_ADDR, NOW) is not None for _ in range(6)]
    assert sent == [True, True, True, True, False, False]  # a 4096-byte burst, then the rate limit
    assert state.info()["dropped: rate limit"] == 2


def test_a_session_that_ends_unregisters_only_its_own_address() -> None:
    state = relay()
    state.publish(record(ALICE, [LAB], now=NOW + 1), ("198.51.100.9", 5), ALICE.node_id, NOW + 1)  # moved
    state.session_ended(ALICE.node_id, A_ADDR)  # the old session's end
    assert state.receive_frame(encode_to_relay(BOB.node_id, b"x"), ("198.51.100.9", 5), NOW + 2) is not None
    state.session_ended(ALICE.node_id, ("198.51.100.9", 5))
    assert state.receive_frame(encode_to_relay(BOB.node_id, b"x"), ("198.51.100.9", 5), NOW + 2) is None


def test_connect_requests_are_rate_limited_per_node() -> None:
    state = relay()
    for _ in range(8):
        assert state.connect_target(ALICE.node_id, BOB.node_id, NOW) == B_ADDR
    with pytest.raises(RemoteProtocolError) as info:
        state.connect_target(ALICE.node_id, BOB.node_id, NOW)
    assert info.value.code == "busy"
    assert state.connect_target(ALICE.node_id, BOB.node_id, NOW + 1.0) == B_ADDR  # one more per second


def test_punch_candidates_are_only_published_ones_and_the_observed_address() -> None:
    state = RelayState()
    published = ["203.0.113.7:4433", "192.168.1.5:4433"]
    state.publish(encode_record(ALICE, "a", [LAB], published, NOW, 180.0), A_ADDR, ALICE.node_id, NOW)
    victims = ["198.51.100.200:53", "192.0.2.1:80"]
    chosen = state.punch_candidates(ALICE.node_id, [*victims, published[1]], A_ADDR)
    assert chosen == ["192.168.1.5:4433", "198.51.100.1:40000"]
    assert state.punch_candidates(BOB.node_id, victims, B_ADDR) == ["198.51.100.2:40001"]  # unregistered
