"""Relay frames and hole-punch probes: the non-QUIC, non-STUN datagrams on a node's one UDP socket.

Sans-IO: pure encoding and decoding. Relayed traffic does not travel inside the node's QUIC session
with the relay; it travels as small UDP datagrams on the same socket, so the relay only copies the
nodes' own end-to-end encrypted QUIC packets (like TURN) and cannot read or alter file data::

    node  -> relay   0x20 | target node id (32 raw bytes) | payload (1..MAX_PAYLOAD bytes)
    node  -> relay   0x22 | target node id (32 raw bytes) | frame token (16 bytes) | payload
    relay -> node    0x21 | source node id (32 raw bytes) | payload
    probe            0x10 | token (16 bytes) | sender node id (32 raw bytes) | flags (0 probe, 1 ack)

A frame to the relay names only its target: the relay knows the source from the UDP address the
frame came from (the address its authenticated QUIC session with that node uses). A source address
can be forged, so (issue 10 #14) the relay gives each registration a random frame token over the
authenticated session (the ``publish`` reply) and, for a node that asked for one, forwards only 0x22
frames carrying it: forged frames "from" that node are dropped before they count against its limits.
0x20 stays for nodes of earlier versions (and relays that issue no token).

Demultiplexing by first byte (``classify``): QUIC packets always have the fixed bit 0x40 set (long
header 0b11xxxxxx, short header 0b01xxxxxx); STUN messages start with 0b000000xx and carry the magic
cookie 0x2112A442 at offset 4 (RFC 8489); 0x10, 0x20, 0x21 and 0x22 are none of these.

Sizes: ``MAX_PAYLOAD`` = 1439 = 1472 - 33, so a relay frame carrying a full payload is at most 1472
bytes, the largest UDP payload that crosses a 1500-byte-MTU IPv4 path without IP fragmentation. The
QUIC ``max_datagram_size`` of any connection that may run over a relay must be <= MAX_PAYLOAD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..ids import is_hex64

TO_RELAY = 0x20
FROM_RELAY = 0x21
TO_RELAY_TOKEN = 0x22
FRAME_TOKEN_SIZE = 16
PROBE = 0x10
NODE_ID_SIZE = 32
TOKEN_SIZE = 16
HEADER_SIZE = 1 + NODE_ID_SIZE
MAX_FRAME_SIZE = 1472
MAX_PAYLOAD = MAX_FRAME_SIZE - HEADER_SIZE
PROBE_SIZE = 1 + TOKEN_SIZE + NODE_ID_SIZE + 1
STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
STUN_HEADER_SIZE = 20

Buffer = bytes | bytearray | memoryview
FrameKind = Literal["to_relay", "from_relay"]
DatagramKind = Literal["quic", "stun", "relay", "probe", "unknown"]

_KIND_BYTES: dict[int, FrameKind] = {TO_RELAY: "to_relay", FROM_RELAY: "from_relay", TO_RELAY_TOKEN: "to_relay"}


@dataclass(frozen=True)
class RelayFrame:
    """A decoded relay frame. ``node_id`` (lower-case hex) is the target for "to_relay" frames and
    the source for "from_relay" frames; ``payload`` is opaque (a QUIC packet)."""

    kind: FrameKind
    node_id: str
    payload: bytes
    token: bytes = b""  # the sender's frame token (0x22 frames), else empty


@dataclass(frozen=True)
class Probe:
    """A decoded hole-punch probe (``ack`` False) or its answer (``ack`` True)."""

    token: bytes
    sender: str
    ack: bool


def _node_id_bytes(node_id: str) -> bytes:
    if not is_hex64(node_id, any_case=True):
        raise ValueError(f"not a node id (64 hex digits): {node_id!r}")
    return bytes.fromhex(node_id)


def _check_payload(payload: Buffer) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ValueError("relay payload must be bytes")
    payload = bytes(payload)
    if not 1 <= len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"relay payload must be 1..{MAX_PAYLOAD} bytes, not {len(payload)}")
    return payload


def encode_to_relay(target_node_id: str, payload: Buffer) -> bytes:
    """A frame a node sends to its relay, asking it to forward ``payload`` to ``target_node_id``.

    ValueError for a malformed node id or an empty or too large payload.
    """
    return bytes([TO_RELAY]) + _node_id_bytes(target_node_id) + _check_payload(payload)


def to_relay_header(target_node_id: str, token: bytes = b"") -> bytes:
    """The header of every frame to ``target_node_id`` (``encode_to_relay`` without the payload), for
    a sender that prefixes many payloads to one target and checks their size itself; with the frame
    token the relay issued us, a 0x22 frame (payload at most MAX_PAYLOAD - FRAME_TOKEN_SIZE)."""
    if not token:
        return bytes([TO_RELAY]) + _node_id_bytes(target_node_id)
    if len(token) != FRAME_TOKEN_SIZE:
        raise ValueError(f"a frame token is exactly {FRAME_TOKEN_SIZE} bytes")
    return bytes([TO_RELAY_TOKEN]) + _node_id_bytes(target_node_id) + bytes(token)


def encode_from_relay(source_node_id: str, payload: Buffer) -> bytes:
    """A frame the relay sends to a target node: ``payload`` came from ``source_node_id``."""
    return bytes([FROM_RELAY]) + _node_id_bytes(source_node_id) + _check_payload(payload)


def decode_relay_frame(data: Buffer) -> RelayFrame:
    """Parse a relay frame of either direction; ValueError if it is not a well-formed one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("a relay frame must be bytes")
    data = bytes(data)
    if not data:
        raise ValueError("empty datagram")
    kind = _KIND_BYTES.get(data[0])
    if kind is None:
        raise ValueError(f"not a relay frame (first byte 0x{data[0]:02x})")
    if len(data) <= HEADER_SIZE:
        raise ValueError(f"relay frame truncated ({len(data)} bytes)")
    if len(data) > MAX_FRAME_SIZE:
        raise ValueError(f"relay frame too large ({len(data)} bytes > {MAX_FRAME_SIZE})")
    if data[0] == TO_RELAY_TOKEN:
        if len(data) <= HEADER_SIZE + FRAME_TOKEN_SIZE:
            raise ValueError(f"relay frame truncated ({len(data)} bytes)")
        end = HEADER_SIZE + FRAME_TOKEN_SIZE
        return RelayFrame(kind, data[1:HEADER_SIZE].hex(), data[end:], token=data[HEADER_SIZE:end])
    return RelayFrame(kind=kind, node_id=data[1:HEADER_SIZE].hex(), payload=data[HEADER_SIZE:])


def encode_probe(token: Buffer, sender: str, ack: bool) -> bytes:
    """A hole-punch probe (or, with ``ack``, the answer to one). ``token`` is the 16-byte secret the
    two nodes exchanged through the relay for this punch attempt."""
    if not isinstance(token, (bytes, bytearray, memoryview)) or len(token) != TOKEN_SIZE:
        raise ValueError(f"a probe token is exactly {TOKEN_SIZE} bytes")
    return bytes([PROBE]) + bytes(token) + _node_id_bytes(sender) + bytes([1 if ack else 0])


def decode_probe(data: Buffer) -> Probe:
    """Parse a probe; ValueError if it is not exactly a well-formed one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("a probe must be bytes")
    data = bytes(data)
    if not data or data[0] != PROBE:
        raise ValueError("not a hole-punch probe (wrong first byte)")
    if len(data) != PROBE_SIZE:
        raise ValueError(f"a probe is {PROBE_SIZE} bytes, not {len(data)}")
    flags = data[-1]
    if flags not in (0, 1):
        raise ValueError(f"unknown probe flags 0x{flags:02x}")
    token = data[1 : 1 + TOKEN_SIZE]
    sender = data[1 + TOKEN_SIZE : 1 + TOKEN_SIZE + NODE_ID_SIZE].hex()
    return Probe(token=token, sender=sender, ack=flags == 1)


def classify(data: Buffer) -> DatagramKind:
    """Which protocol a datagram on the shared socket belongs to, from its first byte(s).

    "relay" and "probe" also require the minimum size of their kind, and "stun" the magic cookie,
    so that a short or garbled datagram is "unknown" (drop and count it). A "relay" datagram can
    still fail ``decode_relay_frame`` (too large); a "probe" can still have bad flags.
    """
    if not data:
        return "unknown"
    first = data[0]
    if first & 0x40:
        return "quic"
    if first <= 0x03:
        if len(data) >= STUN_HEADER_SIZE and bytes(data[4:8]) == STUN_MAGIC_COOKIE:
            return "stun"
        return "unknown"
    if first in _KIND_BYTES:
        return "relay" if len(data) > HEADER_SIZE + (FRAME_TOKEN_SIZE if first == TO_RELAY_TOKEN else 0) else "unknown"
    if first == PROBE:
        return "probe" if len(data) == PROBE_SIZE else "unknown"
    return "unknown"
