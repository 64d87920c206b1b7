"""Framing on a QUIC stream: one length-prefixed JSON header, then raw bytes until FIN.

    frame  = length (4 bytes, big-endian) || JSON object (UTF-8, at most MAX_HEADER bytes)

Every request runs on its own bidirectional stream: the requester writes one header and FIN; the
responder writes one header (``{"ok": true, ...}`` or ``{"ok": false, "code": ..., "message": ...}``),
then for data responses exactly ``length`` raw bytes, then FIN.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ..errors import RemoteProtocolError

MAX_HEADER = 16 * 1024
_LENGTH = struct.Struct(">I")


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_HEADER:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_HEADER}")
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Collects one header frame from stream data; what follows it is body bytes.

    ``feed`` returns None until the header is complete, then ``(header, rest)`` exactly once.
    """

    def __init__(self, max_header: int = MAX_HEADER) -> None:
        self._buffer = bytearray()
        self._max = max_header
        self.done = False

    def feed(self, data: bytes) -> tuple[dict[str, Any], bytes] | None:
        if self.done:
            raise RuntimeError("header already read")
        self._buffer += data
        if len(self._buffer) < 4:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self._max:
            raise RemoteProtocolError(f"header of {length} bytes is too large", code="frame_too_large")
        if len(self._buffer) < 4 + length:
            return None
        try:
            header = json.loads(bytes(self._buffer[4 : 4 + length]))
        except (ValueError, UnicodeDecodeError):
            raise RemoteProtocolError("header is not JSON", code="bad_frame") from None
        if not isinstance(header, dict):
            raise RemoteProtocolError("header is not a JSON object", code="bad_frame")
        rest = bytes(self._buffer[4 + length :])
        self._buffer = bytearray()
        self.done = True
        return header, rest
