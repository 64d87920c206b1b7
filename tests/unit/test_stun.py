"""STUN codec (RFC 8489, RFC 5769 vectors) and the client retransmission state machine (fake clock)."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_p2p.nat.stun import (
    BINDING_ERROR,
    BINDING_REQUEST,
    BINDING_SUCCESS,
    MAGIC_COOKIE,
    StunMessage,
    StunTransaction,
    binding_error,
    binding_request,
    binding_success,
    is_stun,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 test vectors (sections 2.1, 2.2, 2.3), byte for byte. The SOFTWARE / USERNAME padding
# bytes are 0x20 in the RFC; FINGERPRINT covers them, so parse() verifying it proves the bytes.
RFC5769_TID = _hex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
RFC5769_REQUEST = _hex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae 80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c
    69 65 6e 74 00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36 00 06 00 09 65 76 74 6a 3a 68 36 76
    59 20 20 20 00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2 80 28 00 04 e5 7a 3b cf""")
RFC5769_IPV4_RESPONSE = _hex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae 80 22 00 0b 74 65 73 74 20 76 65 63 74 6f
    72 20 00 20 00 08 00 01 a1 47 e1 12 a6 43 00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53
    f0 6b e7 d7 80 28 00 04 c0 7d 4c 96""")
RFC5769_IPV6_RESPONSE = _hex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae 80 22 00 0b 74 65 73 74 20 76 65 63 74 6f
    72 20 00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9 00 08 00 14 a3 82 95 4e
    4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41 80 28 00 04 c8 fb 0b 4c""")
TID = bytes(range(1, 13))


def test_rfc5769_sample_request() -> None:
    msg = StunMessage.parse(RFC5769_REQUEST)
    assert msg.message_type == BINDING_REQUEST
    assert msg.transaction_id == RFC5769_TID
    assert not msg.is_response
    assert msg.attributes["SOFTWARE"] == "STUN test client"
    assert msg.attributes["0x0024"] == _hex("6e 00 01 ff")  # PRIORITY, unknown to us: raw
    assert msg.attributes["0x8029"] == _hex("93 2f f9 b1 51 26 3b 36")  # ICE-CONTROLLED
    assert msg.attributes["0x0006"] == b"evtj:h6vY"  # USERNAME without its padding
    assert len(msg.attributes["MESSAGE-INTEGRITY"]) == 20
    assert msg.attributes["FINGERPRINT"] == 0xE57A3BCF
    assert list(msg.attributes)[-1] == "FINGERPRINT"
    assert is_stun(RFC5769_REQUEST)


def test_rfc5769_sample_ipv4_response() -> None:
    msg = StunMessage.parse(RFC5769_IPV4_RESPONSE)
    assert msg.message_type == BINDING_SUCCESS
    assert msg.is_response
    assert msg.attributes["SOFTWARE"] == "test vector"
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert msg.mapped_address == ("192.0.2.1", 32853)
    assert msg.attributes["FINGERPRINT"] == 0xC07D4C96


def test_rfc5769_sample_ipv6_response() -> None:
    msg = StunMessage.parse(RFC5769_IPV6_RESPONSE)
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert msg.mapped_address == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


@pytest.mark.parametrize(
    ("vector", "address"),
    [
        (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_xor_mapped_address_encodes_like_the_rfc5769_vectors(vector: bytes, address: tuple[str, int]) -> None:
    encoded = StunMessage(BINDING_SUCCESS, RFC5769_TID, {"XOR-MAPPED-ADDRESS": address}).encode()
    attribute = encoded[20:]
    assert attribute in vector
    assert attribute[:2] == b"\x00\x20"


def test_round_trip_with_fingerprint_and_all_known_attributes() -> None:
    attrs = {
        "MAPPED-ADDRESS": ("10.0.0.1", 1),
        "XOR-MAPPED-ADDRESS": ("::1", 65535),
        "OTHER-ADDRESS": ("198.51.100.7", 3479),
        "CHANGE-REQUEST": 6,
        "ERROR-CODE": (420, "Unknown Attribute"),
        "SOFTWARE": "kachery-p2p \u00e9",
        "0x7777": b"\x01\x02\x03",
    }
    data = StunMessage(BINDING_ERROR, TID, attrs).encode(fingerprint=True)
    assert len(data) % 4 == 0 and is_stun(data)
    parsed = StunMessage.parse(data)
    assert parsed.message_type == BINDING_ERROR and parsed.transaction_id == TID
    fingerprint = parsed.attributes.pop("FINGERPRINT")
    assert isinstance(fingerprint, int)
    assert parsed.attributes == attrs
    assert parsed.encode(fingerprint=True) == data


def test_encode_ignores_a_stale_fingerprint_attribute_and_rejects_bad_input() -> None:
    msg = StunMessage(BINDING_REQUEST, TID, {"FINGERPRINT": 1})
    assert msg.encode() == struct.pack("!HHI", 1, 0, MAGIC_COOKIE) + TID
    with pytest.raises(ValueError):
        StunMessage(BINDING_REQUEST, b"short").encode()
    with pytest.raises(ValueError):
        StunMessage(BINDING_REQUEST, TID, {"NO-SUCH-ATTRIBUTE": 1}).encode()


def test_mapped_address_fallback_when_xor_is_absent() -> None:
    data = StunMessage(BINDING_SUCCESS, TID, {"MAPPED-ADDRESS": ("203.0.113.9", 4000)}).encode()
    assert StunMessage.parse(data).mapped_address == ("203.0.113.9", 4000)
    both = {"MAPPED-ADDRESS": ("203.0.113.9", 1), "XOR-MAPPED-ADDRESS": ("203.0.113.9", 2)}
    assert StunMessage.parse(StunMessage(BINDING_SUCCESS, TID, both).encode()).mapped_address == ("203.0.113.9", 2)


def test_binding_request_and_success_helpers() -> None:
    request = StunMessage.parse(binding_request(TID))
    assert request.message_type == BINDING_REQUEST and request.transaction_id == TID
    assert "FINGERPRINT" in request.attributes
    assert len(binding_request(TID, fingerprint=False)) == 20
    assert all(map(is_stun, [binding_request(TID), binding_success(TID, ("::1", 1)), RFC5769_IPV6_RESPONSE]))
    success = StunMessage.parse(binding_success(TID, ("127.0.0.1", 5000)))
    assert success.message_type == BINDING_SUCCESS
    assert success.attributes["XOR-MAPPED-ADDRESS"] == ("127.0.0.1", 5000)
    assert success.attributes["SOFTWARE"] == "kachery-p2p"
    assert list(success.attributes) == ["XOR-MAPPED-ADDRESS", "SOFTWARE", "FINGERPRINT"]
    error = StunMessage.parse(binding_error(TID, 400, "Bad Request"))
    assert error.attributes["ERROR-CODE"] == (400, "Bad Request")


def _with_length(data: bytes, length: int) -> bytes:
    return data[:2] + struct.pack("!H", length) + data[4:]


_GOOD = binding_success(TID, ("192.0.2.1", 1234))


def _fingerprint_then_more() -> bytes:
    """A FINGERPRINT that is valid for the final length, followed by another attribute."""
    header = struct.pack("!HHI", BINDING_SUCCESS, 12, MAGIC_COOKIE) + TID
    crc = zlib.crc32(header) ^ 0x5354554E
    return header + struct.pack("!HHI", 0x8028, 4, crc) + _hex("8022 0000")


_MALFORMED = {
    "empty": (b"", "too short"),
    "truncated header": (_GOOD[:19], "too short"),
    "truncated body": (_GOOD[:-4], "does not match"),
    "length not a multiple of 4": (_with_length(_GOOD + b"\x00\x00", len(_GOOD) - 18), "does not match"),
    "length larger than the datagram": (_with_length(_GOOD, len(_GOOD) - 16), "does not match"),
    "bad cookie": (_GOOD[:4] + b"\x21\x12\xa4\x43" + _GOOD[8:], "cookie"),
    "first two bits set": (bytes([_GOOD[0] | 0x40]) + _GOOD[1:], "two zero bits"),
    "attribute length overflow": (
        struct.pack("!HHI", 0x0101, 8, MAGIC_COOKIE) + TID + _hex("8022 0010 6162 6364"),
        "overflows",
    ),
    "attribute padding overflow": (
        struct.pack("!HHI", 0x0101, 8, MAGIC_COOKIE) + TID + _hex("8022 0005 6162 6364"),
        "overflows",
    ),
    "bad fingerprint": (RFC5769_IPV4_RESPONSE[:-1] + bytes([RFC5769_IPV4_RESPONSE[-1] ^ 1]), "FINGERPRINT"),
    "tampered body under fingerprint": (
        RFC5769_IPV4_RESPONSE[:30] + b"X" + RFC5769_IPV4_RESPONSE[31:],
        "FINGERPRINT mismatch",
    ),
    "attribute after fingerprint": (_fingerprint_then_more(), "after FINGERPRINT"),
    "bad address family": (
        StunMessage(BINDING_SUCCESS, TID, {"0x0001": _hex("0003 0001 7f000001")}).encode(),
        "bad family",
    ),
    "short xor address": (StunMessage(BINDING_SUCCESS, TID, {"0x0020": _hex("0001 0001")}).encode(), "bad length"),
    "bad fingerprint length": (StunMessage(BINDING_SUCCESS, TID, {"0x8028": b"\x00\x00"}).encode(), "4 bytes"),
    "software not utf-8": (StunMessage(BINDING_SUCCESS, TID, {"0x8022": b"\xff\xfe"}).encode(), "utf-8"),
}


@pytest.mark.parametrize(("data", "match"), list(_MALFORMED.values()), ids=list(_MALFORMED))
def test_malformed_messages_raise_value_error(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StunMessage.parse(data)


@given(st.binary(max_size=120), st.integers(0, 0x3FFF))
def test_parse_of_arbitrary_bodies_raises_only_value_error(body: bytes, message_type: int) -> None:
    body += bytes(-len(body) % 4)  # a well-formed header, so the attribute walk is what gets fuzzed
    for data in (body, struct.pack("!HHI", message_type, len(body), MAGIC_COOKIE) + TID + body):
        with contextlib.suppress(ValueError):
            StunMessage.parse(data)


@given(
    tid=st.binary(min_size=12, max_size=12),
    ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    port=st.integers(0, 65535),
)
def test_binding_success_round_trip(tid: bytes, ip: object, port: int) -> None:
    data = binding_success(tid, (str(ip), port))
    assert is_stun(data)
    assert StunMessage.parse(data).mapped_address == (str(ip), port)


@pytest.mark.parametrize(
    "data",
    [
        bytes([0xC0]) + bytes(1199),  # QUIC long header (Initial)
        bytes([0x40]) + bytes(40),  # QUIC short header
        bytes([0xC0]) + _GOOD[1:],  # STUN-shaped but QUIC's first byte
        bytes([0x40]) + _GOOD[1:],
        _GOOD[:4] + b"\x00\x00\x00\x00" + _GOOD[8:],  # no magic cookie (RFC 3489 / pystun3)
        _GOOD[:-4],  # length field does not match
        b"\x00\x01\x00",
    ],
)
def test_is_stun_rejects_quic_and_non_stun(data: bytes) -> None:
    assert not is_stun(data)


# ---- StunTransaction with a fake clock -------------------------------------------------------

SERVER = ("198.51.100.1", 3478)


def _fixed_random(n: int) -> bytes:
    return bytes(range(n))


def test_retransmission_schedule_then_timeout_after_seven_sends() -> None:
    tx = StunTransaction(SERVER, now=100.0, random=_fixed_random)
    sent_at: list[float] = []
    now = 100.0
    for _ in range(40):
        for data, addr in tx.datagrams_to_send(now):
            assert addr == SERVER
            assert StunMessage.parse(data).transaction_id == tx.transaction_id
            sent_at.append(now)
        timer = tx.get_timer()
        if timer is None:
            break
        assert timer > now
        tx.handle_timer(timer - 0.001)  # early: nothing happens
        assert tx.datagrams_to_send(timer - 0.001) == []
        now = timer
        tx.handle_timer(now)
    assert [round(t - 100.0, 3) for t in sent_at] == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75]
    assert now - 100.0 == pytest.approx(15.75 + 16 * 0.25)  # Rm * initial RTO after the last send
    assert tx.failed and tx.result is None and tx.get_timer() is None
    assert tx.sends == 7
    assert "7 sends" in (tx.error or "")


def test_success_stops_the_timer() -> None:
    tx = StunTransaction(SERVER, now=0.0, random=_fixed_random)
    assert len(tx.datagrams_to_send(0.0)) == 1
    tx.handle_timer(0.25)
    assert len(tx.datagrams_to_send(0.25)) == 1
    answer = StunMessage.parse(binding_success(tx.transaction_id, ("203.0.113.5", 61000)))
    assert tx.receive(answer, SERVER)
    assert tx.result == ("203.0.113.5", 61000) and not tx.failed and tx.done
    assert tx.get_timer() is None
    tx.handle_timer(100.0)
    assert tx.datagrams_to_send(100.0) == []
    assert tx.receive(answer, SERVER)  # a late duplicate still matches, changes nothing
    assert tx.result == ("203.0.113.5", 61000)


def test_mismatched_transaction_id_and_requests_are_ignored() -> None:
    assert len(StunTransaction(SERVER, 0.0).transaction_id) == 12  # os.urandom by default
    tx = StunTransaction(SERVER, now=0.0, random=_fixed_random)
    assert tx.transaction_id == bytes(range(12))
    tx.datagrams_to_send(0.0)
    other = StunMessage.parse(binding_success(b"\xff" * 12, ("203.0.113.5", 1)))
    assert not tx.receive(other, SERVER)
    own_request = StunMessage.parse(binding_request(tx.transaction_id))
    assert not tx.receive(own_request, SERVER)
    assert not tx.done and tx.get_timer() == 0.25


def test_error_response_fails_the_transaction() -> None:
    tx = StunTransaction(SERVER, now=0.0, random=_fixed_random)
    tx.datagrams_to_send(0.0)
    assert tx.receive(StunMessage.parse(binding_error(tx.transaction_id, 400, "Bad Request")), SERVER)
    assert tx.failed and tx.result is None
    assert tx.error == "error response 400 Bad Request"
