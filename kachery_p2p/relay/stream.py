"""Datagrams over a byte stream (the relay's TCP transport for networks that block UDP). Sans-IO.

Each datagram travels as a 2-byte big-endian length followed by that many bytes: the nodes' own end-to-end
encrypted QUIC packets (and relay frames), exactly what would have gone over UDP. A zero length or a stream that
buffers more than one maximal frame without completing it is a protocol error (the connection is closed).
"""

from __future__ import annotations

import struct

MAX_DATAGRAM = 16383  # QUIC packets are at most this size here (aioquic breaks above 16383)
_LENGTH = struct.Struct("!H")


def encode_frame(datagram: bytes) -> bytes:
    if not 0 < len(datagram) <= MAX_DATAGRAM:
        raise ValueError(f"a stream frame carries 1..{MAX_DATAGRAM} bytes, not {len(datagram)}")
    return _LENGTH.pack(len(datagram)) + datagram


class Deframer:
    """Turns received stream bytes back into datagrams; ``feed`` raises ValueError on a malformed stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        offset = 0
        while len(buffer) - offset >= 2:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length == 0 or length > MAX_DATAGRAM:
                raise ValueError(f"bad stream frame length {length}")
            if len(buffer) - offset - 2 < length:
                break
            out.append(bytes(buffer[offset + 2 : offset + 2 + length]))
            offset += 2 + length
        del buffer[:offset]
        return out
