"""Relay frames and hole-punch probes: round trips, malformed input, first-byte demultiplexing."""

from __future__ import annotations

import pytest

from kachery_p2p.relay.frames import (
    FROM_RELAY,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_PAYLOAD,
    PROBE_SIZE,
    TO_RELAY,
    Probe,
    RelayFrame,
    classify,
    decode_probe,
    decode_relay_frame,
    encode_from_relay,
    encode_probe,
    encode_to_relay,
)

A = "ab" * 32
B = "0123456789abcdef" * 4
TOKEN = bytes(range(16))
STUN_BINDING_REQUEST = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
STUN_BINDING_RESPONSE = b"\x01\x01\x00\x0c\x21\x12\xa4\x42" + bytes(12) + bytes(12)


def test_to_relay_round_trip() -> None:
    data = encode_to_relay(A, b"quic packet")
    assert data[0] == TO_RELAY == 0x20
    assert data[1:HEADER_SIZE] == bytes.fromhex(A)
    assert decode_relay_frame(data) == RelayFrame("to_relay", A, b"quic packet")


def test_from_relay_round_trip_and_case() -> None:
    data = encode_from_relay(B.upper(), b"\xc0" * MAX_PAYLOAD)
    assert data[0] == FROM_RELAY == 0x21
    assert len(data) == MAX_FRAME_SIZE
    frame = decode_relay_frame(data)
    assert frame == RelayFrame("from_relay", B, b"\xc0" * MAX_PAYLOAD)
    assert decode_relay_frame(bytearray(data)) == frame
    assert decode_relay_frame(memoryview(data)) == frame


def test_max_payload_fits_ipv4_mtu() -> None:
    assert MAX_PAYLOAD + HEADER_SIZE == MAX_FRAME_SIZE == 1500 - 20 - 8
    assert MAX_PAYLOAD >= 1350  # the daemon's direct-path QUIC max_datagram_size


@pytest.mark.parametrize("bad_id", ["", "ab" * 31, "zz" * 32, "ab" * 33, "ab" * 32 + "\n", 42])
def test_encode_rejects_bad_node_id(bad_id: object) -> None:
    with pytest.raises(ValueError):
        encode_to_relay(bad_id, b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_probe(TOKEN, bad_id, False)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", [b"", b"x" * (MAX_PAYLOAD + 1)])
def test_encode_rejects_bad_payload_size(payload: bytes) -> None:
    with pytest.raises(ValueError):
        encode_to_relay(A, payload)
    with pytest.raises(ValueError):
        encode_from_relay(A, payload)


def test_encode_rejects_non_bytes_payload() -> None:
    with pytest.raises(ValueError):
        encode_to_relay(A, "text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x20",
        b"\x20" + bytes(31),
        b"\x20" + bytes(32),  # header only: empty payload
        b"\x22" + bytes(40),  # wrong first byte
        b"\x10" + bytes(40),
        b"\xc0" + bytes(40),
        b"\x21" + bytes(32) + b"x" * (MAX_PAYLOAD + 1),
    ],
)
def test_decode_relay_frame_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_relay_frame(data)


def test_decode_relay_frame_rejects_non_bytes() -> None:
    with pytest.raises(ValueError):
        decode_relay_frame("\x20" * 40)  # type: ignore[arg-type]


@pytest.mark.parametrize("ack", [False, True])
def test_probe_round_trip(ack: bool) -> None:
    data = encode_probe(TOKEN, A, ack)
    assert len(data) == PROBE_SIZE == 50
    assert data[0] == 0x10
    assert data[-1] == (1 if ack else 0)
    assert decode_probe(data) == Probe(TOKEN, A, ack)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x10" + bytes(48),  # one byte short
        b"\x10" + bytes(50),  # one byte long
        b"\x11" + bytes(49),  # wrong first byte
        b"\x10" + bytes(48) + b"\x02",  # unknown flags
    ],
)
def test_decode_probe_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_probe(data)


@pytest.mark.parametrize("token", [b"", bytes(15), bytes(17), "x" * 16])
def test_encode_probe_rejects_bad_token(token: object) -> None:
    with pytest.raises(ValueError):
        encode_probe(token, A, False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (bytes([0xC0]) + bytes(40), "quic"),  # long header (Initial)
        (bytes([0xC3, 0, 0, 0, 1]) + bytes(40), "quic"),
        (bytes([0xF0]) + bytes(40), "quic"),  # long header (Retry)
        (bytes([0x40]) + bytes(40), "quic"),  # short header
        (bytes([0x5F]) + bytes(40), "quic"),
        (bytes([0x7F]), "quic"),
        (STUN_BINDING_REQUEST, "stun"),
        (STUN_BINDING_RESPONSE, "stun"),
        (b"\x00\x01\x00\x00" + bytes(16), "unknown"),  # no magic cookie
        (STUN_BINDING_REQUEST[:19], "unknown"),  # shorter than a STUN header
        (encode_to_relay(A, b"x"), "relay"),
        (encode_from_relay(A, b"x" * MAX_PAYLOAD), "relay"),
        (b"\x20" + bytes(32), "unknown"),  # relay header without payload
        (encode_probe(TOKEN, A, False), "probe"),
        (encode_probe(TOKEN, A, True), "probe"),
        (b"\x10" + bytes(40), "unknown"),  # probe of the wrong size
        (b"", "unknown"),
        (b"\x80" + bytes(40), "unknown"),  # 0x80 without the QUIC fixed bit
        (b"\x30" + bytes(40), "unknown"),
        (b"\x04\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), "unknown"),
    ],
)
def test_classify(data: bytes, kind: str) -> None:
    assert classify(data) == kind


def test_frame_first_bytes_never_look_like_quic_or_stun() -> None:
    for first in (TO_RELAY, FROM_RELAY, 0x10):
        assert not first & 0x40
        assert first > 0x03
