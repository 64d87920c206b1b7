"""Signed LAN announcements: encoding, every rejection reason, replay protection (sans-IO)."""

from __future__ import annotations

import json

import pytest

from kachery_p2p.channels.announcements import (
    MAGIC,
    MAX_DATAGRAM_SIZE,
    MAX_LABEL_CHARS,
    MAX_RENDEZVOUS_IDS,
    PROTOCOL,
    Announcement,
    AnnouncementTracker,
    decode_announcement,
    encode_announcement,
    shared_rendezvous,
)
from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.errors import LocalProtocolError, RemoteProtocolError
from kachery_p2p.quic.identity import NodeIdentity

NOW = 1_700_000_000.25
ALICE = NodeIdentity.from_private_bytes(bytes(range(32)))
BOB = NodeIdentity.from_private_bytes(bytes(range(32, 64)))
RV = [rendezvous_id("lab-a"), rendezvous_id("lab-b")]


def _encode(now: float = NOW, lifetime: float = 60.0, identity: NodeIdentity = ALICE) -> bytes:
    return encode_announcement(identity, "alice's laptop", 4433, RV, now, lifetime)


def _split(data: bytes) -> dict[str, object]:
    body = json.loads(data[len(MAGIC) : -64])
    assert isinstance(body, dict)
    return body


def _resign(body: dict[str, object], identity: NodeIdentity = ALICE) -> bytes:
    signed = MAGIC + json.dumps(body, separators=(",", ":")).encode()
    return signed + identity.sign(signed)


def _rejected(data: bytes, now: float = NOW, match: str | None = None) -> str:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_announcement(data, now)
    assert info.value.code == "bad_announcement"
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip() -> None:
    data = _encode()
    assert data.startswith(b"KP2PLAN1")
    assert len(data) <= MAX_DATAGRAM_SIZE
    a = decode_announcement(data, NOW + 1)
    assert a == Announcement(
        node_id=ALICE.node_id,
        label="alice's laptop",
        quic_port=4433,
        rendezvous_ids=tuple(RV),
        timestamp=NOW,
        expires=NOW + 60.0,
        protocol=PROTOCOL,
    )
    assert a.lifetime == pytest.approx(60.0)


def test_largest_announcement_fits_and_label_is_trimmed_to_fit() -> None:
    ids = [rendezvous_id(f"channel-{i}") for i in range(MAX_RENDEZVOUS_IDS)]
    label = "\U0001f600" * 100  # 4 UTF-8 bytes each
    data = encode_announcement(ALICE, label, 65535, ids, 9_999_999_999.123456, 600.0)
    assert len(data) <= MAX_DATAGRAM_SIZE
    a = decode_announcement(data, 9_999_999_999.2)
    assert a.rendezvous_ids == tuple(ids)
    assert 0 < len(a.label) <= MAX_LABEL_CHARS and set(a.label) == {"\U0001f600"}
    plain = decode_announcement(encode_announcement(ALICE, "x" * 100, 1, ids, NOW), NOW)
    assert plain.label == "x" * MAX_LABEL_CHARS


def test_label_control_characters_are_replaced() -> None:
    a = decode_announcement(encode_announcement(ALICE, "evil\x1b[31m\n", 1, [], NOW), NOW)
    assert a.label == "evil\ufffd[31m\ufffd"


def test_encode_misuse_is_local_error() -> None:
    too_many = [rendezvous_id(f"c{i}") for i in range(MAX_RENDEZVOUS_IDS + 1)]
    for kwargs in (
        {"rendezvous_ids": too_many},
        {"rendezvous_ids": ["not-hex"]},
        {"quic_port": 0},
        {"quic_port": 70000},
        {"lifetime": 601.0},
        {"lifetime": 0.0},
        {"now": float("nan")},
    ):
        args: dict[str, object] = {
            "identity": ALICE,
            "label": "x",
            "quic_port": 1,
            "rendezvous_ids": RV,
            "now": NOW,
        }
        args.update(kwargs)
        with pytest.raises(LocalProtocolError):
            encode_announcement(**args)  # type: ignore[arg-type]
    # Duplicates (in any case) count once.
    a = decode_announcement(encode_announcement(ALICE, "x", 1, [RV[0], RV[0].upper()] * 9, NOW), NOW)
    assert a.rendezvous_ids == (RV[0],)


def test_every_tampered_byte_is_rejected() -> None:
    data = _encode()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(RemoteProtocolError):
            decode_announcement(bytes(tampered), NOW)


def test_tampered_port_is_bad_signature() -> None:
    data = _encode()
    tampered = data.replace(b'"p":4433', b'"p":4434')
    assert tampered != data
    _rejected(tampered, match="signature")


def test_other_nodes_key_is_rejected() -> None:
    body = _split(_encode())
    # Signed by Bob but claiming to be Alice: the signature must match the announced node id.
    _rejected(_resign(body, identity=BOB), match="signature")
    # Bob's own announcement is fine.
    body["n"] = BOB.node_id
    assert decode_announcement(_resign(body, identity=BOB), NOW).node_id == BOB.node_id


def test_expired() -> None:
    data = _encode(lifetime=60.0)
    decode_announcement(data, NOW + 60.0)  # still valid at the last instant
    _rejected(data, now=NOW + 60.5, match="expired")


def test_timestamp_in_the_future() -> None:
    data = _encode(now=NOW + 300)
    _rejected(data, match="future")
    decode_announcement(_encode(now=NOW + 100), NOW)  # within the allowed clock skew


def test_lifetime_too_long() -> None:
    body = _split(_encode())
    body["x"] = NOW + 601
    _rejected(_resign(body), match="lifetime")
    body["x"] = NOW - 1
    _rejected(_resign(body), now=NOW - 2, match="expires before")


def test_wrong_magic() -> None:
    data = _encode()
    _rejected(b"KP2PLAN2" + data[8:], match="magic")
    _rejected(b"", match="magic")
    _rejected(MAGIC + b"{}", match="truncated")


def test_oversize() -> None:
    data = _encode()
    _rejected(data + b"\x00" * (MAX_DATAGRAM_SIZE + 1 - len(data)), match="too large")


@pytest.mark.parametrize(
    "change",
    [
        {"n": "AB" * 32},  # upper case: one spelling per node id
        {"n": "ab" * 31},
        {"p": True},
        {"p": "4433"},
        {"p": 0},
        {"l": "a\x07"},
        {"l": "x" * 65},
        {"r": "not a list"},
        {"r": ["A" * 44]},
        {"r": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB"]},  # non-canonical trailing bits
        {"t": "soon"},
        {"x": None},
        {"x": 10**400},
        {"v": ""},
    ],
)
def test_bad_fields(change: dict[str, object]) -> None:
    body = _split(_encode())
    body.update(change)
    _rejected(_resign(body))


def test_bad_json() -> None:
    for body in (b"[1,2]", b"{not json", b'{"t":NaN}', b"\xff\xfe"):
        signed = MAGIC + body
        _rejected(signed + ALICE.sign(signed))


def test_shared_rendezvous() -> None:
    a = decode_announcement(_encode(), NOW)
    mine = [rendezvous_id("other"), RV[1].upper(), RV[0]]
    assert shared_rendezvous(a, mine) == [RV[1], RV[0]]
    assert shared_rendezvous(a, []) == []


def test_tracker_rejects_replay_and_accepts_newer() -> None:
    tracker = AnnouncementTracker()
    old = decode_announcement(_encode(now=NOW, lifetime=600), NOW)
    new = decode_announcement(_encode(now=NOW + 10), NOW + 10)
    assert tracker.accept(old, NOW)
    assert not tracker.accept(old, NOW + 1)  # duplicate
    assert tracker.accept(new, NOW + 10)
    assert not tracker.accept(old, NOW + 11)  # replay of the older one
    assert tracker.known() == [new]
    newer = decode_announcement(_encode(now=NOW + 20), NOW + 20)
    assert tracker.accept(newer, NOW + 20)
    assert tracker.get(ALICE.node_id) == newer
    bob = decode_announcement(_encode(now=NOW + 5, identity=BOB), NOW + 5)
    assert tracker.accept(bob, NOW + 21)  # other nodes are independent
    assert {a.node_id for a in tracker.known()} == {ALICE.node_id, BOB.node_id}


def test_forget_expired_keeps_replay_protection() -> None:
    tracker = AnnouncementTracker()
    long_lived = decode_announcement(_encode(now=NOW, lifetime=600), NOW)
    short_lived = decode_announcement(_encode(now=NOW + 10, lifetime=60), NOW + 10)
    assert tracker.accept(long_lived, NOW)
    assert tracker.accept(short_lived, NOW + 10)
    assert tracker.forget_expired(NOW + 70) == []
    assert tracker.forget_expired(NOW + 71) == [short_lived]
    assert tracker.known() == []
    # The older announcement is still within its lifetime, but must not come back.
    assert not tracker.accept(long_lived, NOW + 100)
    assert not tracker.accept(short_lived, NOW + 50)
    # Once every older announcement has surely expired, the node's mark is forgotten too.
    tracker.forget_expired(NOW + 10 + 602)
    assert tracker.accept(decode_announcement(_encode(now=NOW + 700), NOW + 700), NOW + 700)


def test_tracker_refuses_expired_and_caps_nodes() -> None:
    tracker = AnnouncementTracker(max_nodes=1)
    a = decode_announcement(_encode(), NOW)
    assert not tracker.accept(a, NOW + 61)
    assert tracker.accept(a, NOW)
    b = decode_announcement(_encode(identity=BOB), NOW)
    assert not tracker.accept(b, NOW + 1)  # full: new nodes are refused rather than evicting a mark
    later = NOW + 700  # Alice's announcement and replay mark are gone
    assert tracker.accept(decode_announcement(_encode(now=later, identity=BOB), later), later)
