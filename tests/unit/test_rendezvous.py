"""Signed rendezvous records: round trips, the shared form, and every rejection reason (sans-IO)."""

from __future__ import annotations

from typing import Any

import pytest

from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.channels.rendezvous import (
    MAX_CANDIDATES,
    MAX_RENDEZVOUS_IDS,
    SIGN_CONTEXT,
    VERSION,
    RendezvousRecord,
    _signed_bytes,
    decode_record,
    encode_record,
    format_candidate,
    parse_candidate,
    rendezvous_digest,
)
from kachery_p2p.errors import LocalProtocolError, RemoteProtocolError
from kachery_p2p.quic.identity import NodeIdentity

NOW = 1_700_000_000.25
ALICE = NodeIdentity.from_private_bytes(bytes(range(32)))
BOB = NodeIdentity.from_private_bytes(bytes(range(32, 64)))
RV = [rendezvous_id("lab-a"), rendezvous_id("lab-b")]
CANDIDATES = ["192.168.1.20:4433", "203.0.113.7:61000", "[2001:db8::1]:4433"]


def _encode(now: float = NOW, lifetime: float = 300.0, identity: NodeIdentity = ALICE) -> dict[str, Any]:
    return encode_record(identity, "alice's laptop", RV, CANDIDATES, now, lifetime)


def _resign(obj: dict[str, Any], identity: NodeIdentity = ALICE) -> dict[str, Any]:
    obj = dict(obj)
    obj["signature"] = identity.sign(_signed_bytes(obj)).hex()
    return obj


def _rejected(obj: Any, now: float = NOW, match: str | None = None) -> str:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_record(obj, now)
    assert info.value.code == "bad_request"
    assert "\n" not in str(info.value)
    return str(info.value)


def test_round_trip() -> None:
    obj = _encode()
    assert obj["version"] == VERSION
    assert obj["rendezvous_ids"] == RV
    record = decode_record(obj, NOW + 1)
    assert record == RendezvousRecord(
        node_id=ALICE.node_id,
        label="alice's laptop",
        rendezvous_ids=tuple(RV),
        candidates=tuple(CANDIDATES),
        timestamp=NOW,
        expires=NOW + 300.0,
        rendezvous_digest=rendezvous_digest(RV),
        signature=obj["signature"],
    )
    assert record.lifetime == pytest.approx(300.0)
    assert record.lists_its_ids()


def test_encode_normalises_input() -> None:
    ids = [RV[0].upper(), RV[0], RV[1]]
    candidates = ["[::ffff:10.0.0.1]:5", "10.0.0.1:5", "[2001:DB8:0::1]:7"]
    obj = encode_record(ALICE, "a\x00b" + "x" * 100, ids, candidates, NOW)
    assert obj["rendezvous_ids"] == RV
    assert obj["candidates"] == ["10.0.0.1:5", "[2001:db8::1]:7"]
    assert obj["label"] == "a\ufffdb" + "x" * 61
    decode_record(obj, NOW)


def test_shared_form_hides_ids_and_still_verifies() -> None:
    record = decode_record(_encode(), NOW)
    shared = record.shared_dict()
    assert "rendezvous_ids" not in shared
    assert not any(rid in str(shared) for rid in RV)
    again = decode_record(shared, NOW + 5)
    assert again.rendezvous_ids == ()
    assert not again.lists_its_ids()
    assert (again.node_id, again.candidates, again.signature) == (record.node_id, record.candidates, record.signature)
    assert again.shared_dict() == shared


def test_digest_is_order_independent() -> None:
    assert rendezvous_digest(RV) == rendezvous_digest(list(reversed(RV)))
    assert rendezvous_digest(RV) != rendezvous_digest(RV[:1])
    assert rendezvous_digest([]) != rendezvous_digest(RV[:1])


def test_signature_domain_separated() -> None:
    assert _signed_bytes(_encode()).startswith(SIGN_CONTEXT)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("label", "mallory"),
        ("candidates", ["198.51.100.66:4433"]),
        ("timestamp", NOW + 1),
        ("expires", NOW + 200),
        ("rendezvous_digest", "00" * 32),
        ("extra", "unsigned addition"),
    ],
)
def test_tampering_breaks_signature(key: str, value: Any) -> None:
    obj = _encode()
    obj[key] = value
    if key == "rendezvous_digest":
        del obj["rendezvous_ids"]  # else the digest check fires first
    _rejected(obj, match="signature|digest")


def test_ids_must_match_digest() -> None:
    obj = _encode()
    obj["rendezvous_ids"] = [rendezvous_id("somewhere else")]
    _rejected(obj, match="digest")


def test_signed_by_someone_else() -> None:
    obj = _encode()
    obj["node_id"] = BOB.node_id
    _rejected(obj, match="signature")
    _rejected(_resign(_encode(), BOB), match="signature")


def test_unknown_keys_are_signed_and_kept() -> None:
    obj = _resign({**_encode(), "future": {"x": [1, 2]}})
    record = decode_record(obj, NOW)
    assert record.shared_dict()["future"] == {"x": [1, 2]}


def test_expired_and_future() -> None:
    obj = _encode(lifetime=60.0)
    decode_record(obj, NOW + 60.0)
    _rejected(obj, now=NOW + 60.5, match="expired")
    decode_record(obj, NOW - 119.0)
    _rejected(obj, now=NOW - 121.0, match="future")


def test_lifetime_limits() -> None:
    _rejected(_resign({**_encode(), "expires": NOW + 601.0}), match="lifetime")
    _rejected(_resign({**_encode(), "expires": NOW}), match="before")
    for lifetime in (0.0, -1.0, 600.5, float("nan"), float("inf")):
        with pytest.raises(LocalProtocolError):
            _encode(lifetime=lifetime)
    decode_record(_encode(lifetime=600.0), NOW)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("version", "kachery-p2p/rendezvous/2"),
        ("node_id", "AB" * 32),
        ("node_id", 7),
        ("node_id", ALICE.node_id + "\n"),
        ("label", "x" * 65),
        ("label", "tab\there"),
        ("label", None),
        ("candidates", "1.2.3.4:5"),
        ("candidates", [f"10.0.0.{i}:1" for i in range(MAX_CANDIDATES + 1)]),
        ("candidates", ["10.0.0.1:1", "10.0.0.1:1"]),
        ("candidates", ["example.org:443"]),
        ("candidates", ["10.0.0.1:0"]),
        ("candidates", ["10.0.0.1:65536"]),
        ("candidates", ["10.0.0.1:080"]),
        ("candidates", ["0.0.0.0:1"]),
        ("candidates", ["224.0.0.251:5353"]),
        ("candidates", ["255.255.255.255:1"]),
        ("candidates", ["[fe80::1%eth0]:1"]),
        ("candidates", ["[2001:DB8::1]:1"]),
        ("candidates", ["[::ffff:10.0.0.1]:1"]),
        ("candidates", [5]),
        ("candidates", ["10.0.0.1:80\n"]),
        ("rendezvous_digest", "zz" * 32),
        ("rendezvous_ids", "not a list"),
        ("rendezvous_ids", [RV[0], RV[0]]),
        ("rendezvous_ids", [RV[0].upper()]),
        ("rendezvous_ids", [RV[0] + "\n", RV[1]]),
        ("rendezvous_ids", ["ab" * 32] * (MAX_RENDEZVOUS_IDS + 1)),
        ("timestamp", "now"),
        ("timestamp", True),
        ("timestamp", 10**400),
        ("expires", None),
        ("signature", "00" * 63),
        ("signature", 5),
    ],
)
def test_bad_fields(key: str, value: Any) -> None:
    _rejected({**_encode(), key: value})


@pytest.mark.parametrize("missing", ["version", "node_id", "label", "candidates", "timestamp", "signature"])
def test_missing_fields(missing: str) -> None:
    obj = _encode()
    del obj[missing]
    _rejected(obj)


@pytest.mark.parametrize("obj", [None, [], "record", {1: "x"}])
def test_not_an_object(obj: Any) -> None:
    _rejected(obj)


def test_non_json_values_and_size() -> None:
    _rejected({**_encode(), "extra": float("nan")})
    _rejected({**_encode(), "extra": object()})
    _rejected(_resign({**_encode(), "extra": "x" * 5000}), match="too large")


def test_encode_limits() -> None:
    many_ids = [rendezvous_id(f"c{i}") for i in range(MAX_RENDEZVOUS_IDS + 1)]
    with pytest.raises(LocalProtocolError):
        encode_record(ALICE, "x", many_ids, [], NOW)
    encode_record(ALICE, "x", many_ids[:-1], [], NOW)
    with pytest.raises(LocalProtocolError):
        encode_record(ALICE, "x", [], [f"10.0.0.{i}:1" for i in range(MAX_CANDIDATES + 1)], NOW)
    with pytest.raises(LocalProtocolError):
        encode_record(ALICE, "x", ["nothex"], [], NOW)
    with pytest.raises(LocalProtocolError):
        encode_record(ALICE, "x", [], ["localhost:80"], NOW)
    with pytest.raises(LocalProtocolError):
        encode_record(ALICE, "x", [], [], float("inf"))


def test_candidate_helpers() -> None:
    assert parse_candidate("10.0.0.1:4433") == ("10.0.0.1", 4433)
    assert parse_candidate("[2001:db8::1]:1") == ("2001:db8::1", 1)
    assert format_candidate("::ffff:10.0.0.1", 9) == "10.0.0.1:9"
    assert format_candidate("2001:DB8::1", 9) == "[2001:db8::1]:9"
    for host, port in (("10.0.0.1", 0), ("10.0.0.1", True), ("::", 5), ("name", 5)):
        with pytest.raises(ValueError):
            format_candidate(host, port)
    for text in ("", "10.0.0.1", "[2001:db8::1]", "2001:db8::1:5", "10.0.0.1:٣", "10.0.0.1:80\n", "1" * 70 + ":1"):
        with pytest.raises(ValueError):
            parse_candidate(text)


def test_shared_dict_needs_decoded_record() -> None:
    record = RendezvousRecord(ALICE.node_id, "x", (), (), NOW, NOW + 1)
    with pytest.raises(LocalProtocolError):
        record.shared_dict()
