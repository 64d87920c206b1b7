"""Issue 10 #14: relay frames bound to the authenticated session, not only to a (forgeable) source
address. The relay gives a registering node a frame token over its QUIC session; forged frames "from"
that node's address without the token are dropped before they count against its rate limit."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.channels.rendezvous import encode_record
from kachery_p2p.daemon.paths import PeerPath
from kachery_p2p.quic import messages
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.relay.frames import (
    FRAME_TOKEN_SIZE,
    MAX_FRAME_SIZE,
    classify,
    decode_relay_frame,
    encode_to_relay,
    to_relay_header,
)
from kachery_p2p.relay.limits import RelayLimits
from kachery_p2p.relay.server import RelayState

NOW = 1_700_000_000.0
ALICE = NodeIdentity.from_private_bytes(bytes(range(32)))
BOB = NodeIdentity.from_private_bytes(bytes(range(32, 64)))
LAB = rendezvous_id("lab")
A_ADDR, B_ADDR = ("198.51.100.1", 40000), ("198.51.100.2", 40001)
RELAY_ADDR = ("192.0.2.1", 9000)


def record(identity: NodeIdentity, ids: list[str], now: float = NOW) -> dict[str, Any]:
    return encode_record(identity, "x", ids, [], now, 180.0)


def frame(target: str, payload: bytes, token: bytes = b"") -> bytes:
    return to_relay_header(target, token) + payload


def test_forged_frames_from_a_nodes_address_do_not_use_up_its_rate_limit() -> None:
    # The scenario: N1 (alice) relays to N2 (bob) within a 64 KiB burst at 1 kB/s; an attacker
    # forges frames with alice's source address. Before: they were charged to alice and hers refused.
    state = RelayState(RelayLimits(burst_bytes=64 * 1024, bytes_per_sec_per_node=1000))
    state.publish(record(ALICE, [LAB]), A_ADDR, ALICE.node_id, NOW)
    state.publish(record(BOB, [LAB]), B_ADDR, BOB.node_id, NOW)
    token = state.frame_token(ALICE.node_id)  # sent to alice over her session (the publish reply)
    assert len(token) == FRAME_TOKEN_SIZE
    payload = b"q" * 1000
    forged = [encode_to_relay(BOB.node_id, payload), frame(BOB.node_id, payload, os.urandom(FRAME_TOKEN_SIZE))]
    for index in range(200):  # 200 kB of forged frames, three times the burst
        assert state.receive_frame(forged[index % 2], A_ADDR, NOW) is None
    assert state.info()["dropped: bad frame token"] == 200
    assert "dropped: rate limit" not in state.info()
    genuine = [state.receive_frame(frame(BOB.node_id, payload, token), A_ADDR, NOW) for _ in range(60)]
    assert all(out is not None for out in genuine)  # alice still has her whole burst
    data, to = genuine[0]  # type: ignore[misc]
    assert to == B_ADDR and decode_relay_frame(data).payload == payload


def test_the_token_is_kept_while_registered_and_new_for_a_new_registration() -> None:
    state = RelayState()
    state.publish(record(ALICE, [LAB]), A_ADDR, ALICE.node_id, NOW)
    state.publish(record(BOB, [LAB]), B_ADDR, BOB.node_id, NOW)
    first = state.frame_token(ALICE.node_id)
    state.publish(record(ALICE, [LAB], now=NOW + 60), A_ADDR, ALICE.node_id, NOW + 60)
    assert state.frame_token(ALICE.node_id) == first  # a refresh: frames in flight stay good
    moved = ("198.51.100.9", 1234)
    state.publish(record(ALICE, [LAB], now=NOW + 61), moved, ALICE.node_id, NOW + 61)
    second = state.frame_token(ALICE.node_id)
    assert second != first
    assert state.receive_frame(frame(BOB.node_id, b"x", first), moved, NOW + 61) is None
    assert state.receive_frame(frame(BOB.node_id, b"x", second), moved, NOW + 61) is not None
    state.session_ended(ALICE.node_id, moved)
    state.publish(record(ALICE, [LAB], now=NOW + 62), moved, ALICE.node_id, NOW + 62)
    assert state.frame_token(ALICE.node_id) not in (first, second)  # a new session, a new token


def test_a_node_that_asked_for_no_token_is_still_known_by_its_address() -> None:
    state = RelayState()  # nodes of earlier versions: no "frameToken" in their publish
    state.publish(record(ALICE, [LAB]), A_ADDR, ALICE.node_id, NOW)
    state.publish(record(BOB, [LAB]), B_ADDR, BOB.node_id, NOW)
    assert state.receive_frame(encode_to_relay(BOB.node_id, b"x"), A_ADDR, NOW) is not None


def test_token_frames_encode_decode_and_classify() -> None:
    token = bytes(range(FRAME_TOKEN_SIZE))
    data = frame(BOB.node_id, b"\xc0" * 1000, token)
    assert data[0] == 0x22 and classify(data) == "relay"
    parsed = decode_relay_frame(data)
    assert (parsed.kind, parsed.node_id, parsed.token, parsed.payload) == (
        "to_relay",
        BOB.node_id,
        token,
        b"\xc0" * 1000,
    )
    assert classify(data[: 1 + 32 + FRAME_TOKEN_SIZE]) == "unknown"  # no payload
    assert len(frame(BOB.node_id, b"x" * (MAX_FRAME_SIZE - 49), token)) == MAX_FRAME_SIZE
    assert decode_relay_frame(encode_to_relay(BOB.node_id, b"x")).token == b""


def test_the_publish_message_asks_for_a_token() -> None:
    request = messages.parse_request({"op": "publish", "record": {"a": 1}, "frameToken": True})
    assert isinstance(request, messages.Publish) and request.frame_token
    old = messages.parse_request({"op": "publish", "record": {"a": 1}})
    assert isinstance(old, messages.Publish) and not old.frame_token


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))


def test_a_relayed_path_sends_the_token_once_the_relay_issued_one() -> None:
    async def main() -> None:
        tokens: dict[tuple[str, int], bytes] = {}
        path = PeerPath(RELAY_ADDR, BOB.node_id, tokens)
        transport = Transport()
        path.send(transport, b"\xc0first")  # type: ignore[arg-type]
        tokens[RELAY_ADDR] = token = os.urandom(FRAME_TOKEN_SIZE)
        path.send(transport, b"\xc0second")  # type: ignore[arg-type]
        (old, to_old), (new, to_new) = transport.sent
        assert to_old == to_new == RELAY_ADDR
        assert decode_relay_frame(old).token == b"" and decode_relay_frame(old).payload == b"\xc0first"
        assert decode_relay_frame(new).token == token and decode_relay_frame(new).payload == b"\xc0second"

    asyncio.run(main())
