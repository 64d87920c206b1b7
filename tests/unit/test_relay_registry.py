"""The relay registry: who may publish what, replay, lookup visibility, expiry and capacity (sans-IO)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.channels.rendezvous import decode_record, encode_record
from kachery_p2p.errors import LocalProtocolError, RemoteProtocolError
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.relay.registry import Registry

NOW = 1_700_000_000.0
ALICE = NodeIdentity.from_private_bytes(bytes(range(32)))
BOB = NodeIdentity.from_private_bytes(bytes(range(32, 64)))
CAROL = NodeIdentity.from_private_bytes(bytes(range(64, 96)))
LAB = rendezvous_id("lab")
OTHER = rendezvous_id("other")
SECRET = rendezvous_id("alice and carol only")
A_ADDR = ("198.51.100.1", 40000)
B_ADDR = ("198.51.100.2", 40001)
C_ADDR = ("198.51.100.3", 40002)


def _record(identity: NodeIdentity, ids: list[str], now: float = NOW, lifetime: float = 300.0) -> dict[str, Any]:
    return encode_record(identity, identity.node_id[:8], ids, ["10.0.0.5:4433"], now, lifetime)


def _refused(code: str, fn: Any, *args: Any) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        fn(*args)
    assert info.value.code == code
    return str(info.value)


def _three() -> Registry:
    registry = Registry()
    registry.publish(_record(ALICE, [LAB, SECRET]), A_ADDR, ALICE.node_id, NOW)
    registry.publish(_record(BOB, [LAB, OTHER]), B_ADDR, BOB.node_id, NOW)
    registry.publish(decode_record(_record(CAROL, [SECRET]), NOW), C_ADDR, CAROL.node_id, NOW)
    return registry


def test_publish_and_lookup() -> None:
    registry = _three()
    assert registry.registered(ALICE.node_id)
    assert registry.address_of(BOB.node_id) == B_ADDR
    assert registry.node_at(C_ADDR) == CAROL.node_id
    found = registry.lookup([LAB], BOB.node_id, NOW + 1)
    assert len(found) == 1
    record = decode_record(found[0]["record"], NOW + 1)  # the signature survives the relay
    assert record.node_id == ALICE.node_id
    assert record.rendezvous_ids == ()  # other channels of alice stay hidden
    assert SECRET not in str(found)
    assert found[0]["observed"] == "198.51.100.1:40000"
    assert found[0]["shared"] == [LAB]


def test_lookup_never_self_and_only_sharing_nodes() -> None:
    registry = _three()
    ids = {decode_record(r["record"], NOW).node_id for r in registry.lookup([LAB, SECRET], ALICE.node_id, NOW)}
    assert ids == {BOB.node_id, CAROL.node_id}
    assert registry.lookup([OTHER], BOB.node_id, NOW) == []
    shared = {r["record"]["node_id"]: r["shared"] for r in registry.lookup([SECRET, LAB], CAROL.node_id, NOW)}
    assert shared == {ALICE.node_id: [SECRET, LAB], BOB.node_id: [LAB]}
    assert registry.lookup([rendezvous_id("nobody")], ALICE.node_id, NOW) == []


def test_lookup_validates_ids() -> None:
    registry = _three()
    _refused("bad_request", registry.lookup, ["nothex"], ALICE.node_id, NOW)
    _refused("bad_request", registry.lookup, [7], ALICE.node_id, NOW)
    _refused("bad_request", registry.lookup, [LAB + "\n"], ALICE.node_id, NOW)
    too_many = [rendezvous_id(str(i)) for i in range(65)]
    _refused("bad_request", registry.lookup, too_many, ALICE.node_id, NOW)
    assert len(registry.lookup([LAB.upper(), LAB], CAROL.node_id, NOW)) == 2


def test_impersonation_refused() -> None:
    registry = Registry()
    message = _refused("not_authorized", registry.publish, _record(ALICE, [LAB]), B_ADDR, BOB.node_id, NOW)
    assert "own" in message
    assert not registry.registered(ALICE.node_id)
    assert registry.node_at(B_ADDR) is None
    assert registry.stats()["refused"] == {"not_authorized": 1}


def test_bad_record_refused() -> None:
    registry = Registry()
    obj = _record(ALICE, [LAB])
    obj["label"] = "tampered"
    _refused("bad_request", registry.publish, obj, A_ADDR, ALICE.node_id, NOW)
    _refused("bad_request", registry.publish, _record(ALICE, [LAB]), A_ADDR, ALICE.node_id, NOW + 301)
    assert not registry.registered(ALICE.node_id)


def test_shared_form_cannot_be_published() -> None:
    registry = Registry()
    shared = decode_record(_record(ALICE, [LAB]), NOW).shared_dict()
    _refused("bad_request", registry.publish, shared, A_ADDR, ALICE.node_id, NOW)


def test_replay_refused_and_cannot_move_address() -> None:
    registry = Registry()
    old = _record(ALICE, [LAB], now=NOW)
    new = _record(ALICE, [LAB, OTHER], now=NOW + 10)
    registry.publish(old, A_ADDR, ALICE.node_id, NOW)
    registry.publish(new, ("203.0.113.9", 5000), ALICE.node_id, NOW + 10)
    _refused("bad_request", registry.publish, old, A_ADDR, ALICE.node_id, NOW + 11)
    _refused("bad_request", registry.publish, new, A_ADDR, ALICE.node_id, NOW + 11)  # same timestamp
    assert registry.address_of(ALICE.node_id) == ("203.0.113.9", 5000)
    assert registry.node_at(A_ADDR) is None
    record = registry.record_of(ALICE.node_id)
    assert record is not None and record.timestamp == NOW + 10


def test_replay_refused_after_reconnect() -> None:
    registry = Registry()
    registry.publish(_record(ALICE, [LAB], now=NOW), A_ADDR, ALICE.node_id, NOW)
    assert registry.remove(ALICE.node_id)
    _refused("bad_request", registry.publish, _record(ALICE, [LAB], now=NOW), B_ADDR, ALICE.node_id, NOW + 1)
    registry.publish(_record(ALICE, [LAB], now=NOW + 1), B_ADDR, ALICE.node_id, NOW + 1)
    assert registry.address_of(ALICE.node_id) == B_ADDR


def test_republish_changes_channels() -> None:
    registry = _three()
    registry.publish(_record(ALICE, [OTHER], now=NOW + 5), A_ADDR, ALICE.node_id, NOW + 5)
    assert registry.lookup([LAB], BOB.node_id, NOW + 5) == []
    assert len(registry.lookup([OTHER], BOB.node_id, NOW + 5)) == 1
    assert registry.stats()["rendezvous_ids"] == 3  # LAB (bob), OTHER (alice, bob), SECRET (carol)
    registry.publish(_record(BOB, [OTHER], now=NOW + 6), B_ADDR, BOB.node_id, NOW + 6)
    assert registry.stats()["rendezvous_ids"] == 2  # nobody is in LAB any more


def test_expiry() -> None:
    registry = Registry()
    registry.publish(_record(ALICE, [LAB], lifetime=60), A_ADDR, ALICE.node_id, NOW)
    registry.publish(_record(BOB, [LAB], lifetime=120), B_ADDR, BOB.node_id, NOW)
    assert registry.next_expiry() == NOW + 60
    assert len(registry.lookup([LAB], BOB.node_id, NOW + 61)) == 0  # expired ones are never handed out
    assert registry.expire(NOW + 60) == []
    assert registry.expire(NOW + 61) == [ALICE.node_id]
    assert not registry.registered(ALICE.node_id)
    assert registry.address_of(ALICE.node_id) is None
    assert registry.node_at(A_ADDR) is None
    assert registry.next_expiry() == NOW + 120
    assert registry.expire(NOW + 200) == [BOB.node_id]
    assert registry.next_expiry() is None
    assert registry.stats()["rendezvous_ids"] == 0


def test_max_nodes_busy() -> None:
    registry = Registry(max_nodes=2)
    registry.publish(_record(ALICE, [LAB], lifetime=60), A_ADDR, ALICE.node_id, NOW)
    registry.publish(_record(BOB, [LAB]), B_ADDR, BOB.node_id, NOW)
    message = _refused("busy", registry.publish, _record(CAROL, [LAB]), C_ADDR, CAROL.node_id, NOW)
    assert "full" in message
    registry.publish(_record(BOB, [LAB], now=NOW + 1), B_ADDR, BOB.node_id, NOW + 1)  # refresh still fine
    registry.publish(_record(CAROL, [LAB], now=NOW + 61), C_ADDR, CAROL.node_id, NOW + 61)  # alice expired
    assert registry.registered(CAROL.node_id) and not registry.registered(ALICE.node_id)


def test_max_ids_per_node() -> None:
    registry = Registry(max_ids_per_node=1)
    _refused("bad_request", registry.publish, _record(ALICE, [LAB, OTHER]), A_ADDR, ALICE.node_id, NOW)
    registry.publish(_record(ALICE, [LAB], now=NOW + 1), A_ADDR, ALICE.node_id, NOW + 1)


def test_remove_only_current_session() -> None:
    registry = _three()
    assert not registry.remove(ALICE.node_id, ("203.0.113.9", 1))  # an older session's address
    assert registry.registered(ALICE.node_id)
    assert registry.remove(ALICE.node_id, (A_ADDR[0], A_ADDR[1], 0, 0))  # IPv6-style 4-tuple is fine
    assert not registry.remove(ALICE.node_id)
    assert registry.lookup([LAB], BOB.node_id, NOW) == []


def test_address_taken_over() -> None:
    registry = _three()
    registry.publish(_record(ALICE, [LAB], now=NOW + 1), B_ADDR, ALICE.node_id, NOW + 1)
    assert registry.node_at(B_ADDR) == ALICE.node_id
    assert not registry.registered(BOB.node_id)
    assert registry.node_at(A_ADDR) is None
    assert registry.set_address(CAROL.node_id, ("198.51.100.3", 50000))
    assert registry.node_at(C_ADDR) is None
    assert registry.address_of(CAROL.node_id) == ("198.51.100.3", 50000)
    assert not registry.set_address(BOB.node_id, C_ADDR)


def test_lookup_limit_samples() -> None:
    registry = Registry(max_results=3, rng=random.Random(1))
    nodes = [NodeIdentity.from_private_bytes(bytes([i]) * 32) for i in range(6)]
    for i, node in enumerate(nodes):
        registry.publish(_record(node, [LAB], now=NOW + i), ("10.1.0.1", 1000 + i), node.node_id, NOW + i)
    seen: set[str] = set()
    for _ in range(30):
        found = registry.lookup([LAB], "00" * 32, NOW + 10)
        assert len(found) == 3
        stamps = [r["record"]["timestamp"] for r in found]
        assert stamps == sorted(stamps, reverse=True)
        seen.update(r["record"]["node_id"] for r in found)
    assert seen == {n.node_id for n in nodes}
    assert len(registry.lookup([LAB], "00" * 32, NOW + 10, limit=1)) == 1


def test_marks_are_bounded() -> None:
    registry = Registry(max_nodes=2)
    for i in range(10):
        node = NodeIdentity.from_private_bytes(bytes([i + 1]) * 32)
        registry.publish(_record(node, [LAB], now=NOW + i), ("10.1.0.1", 1000 + i), node.node_id, NOW + i)
        registry.remove(node.node_id)
    assert len(registry._marks) <= 4
    registry.expire(NOW + 1000)
    assert registry._marks == {}


def test_publish_needs_decoded_record() -> None:
    registry = Registry()
    record = decode_record(_record(ALICE, [LAB]), NOW)
    bare = type(record)(record.node_id, record.label, record.rendezvous_ids, record.candidates, NOW, NOW + 1)
    with pytest.raises(LocalProtocolError):
        registry.publish(bare, A_ADDR, ALICE.node_id, NOW)


def test_stats() -> None:
    registry = _three()
    registry.lookup([LAB], ALICE.node_id, NOW)
    stats = registry.stats()
    assert stats["nodes"] == 3
    assert stats["published"] == 3
    assert stats["lookups"] == 1
    assert stats["refused"] == {}
