"""STUN (RFC 8489) Binding messages, sans-IO: an attribute-table codec and the client retransmission
state machine. No sockets, no clock (callers pass ``now`` and randomness): the same code serves the
daemon's shared UDP socket, the relay's STUN server and ``kachery-p2p-nat-check``.

Attributes: a dict keyed by RFC name. Addresses are ``(host, port)``, text ``str``, ERROR-CODE
``(code, reason)``, FINGERPRINT ``int``; unknown attributes stay raw ``bytes`` under ``"0xNNNN"``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Address = tuple[str, int]

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E
SOFTWARE_NAME = "kachery-p2p"

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003  # RFC 5780 / classic RFC 3489 (what pystun3 sends)
MESSAGE_INTEGRITY = 0x0008  # carried as raw bytes, never computed or checked
ERROR_CODE = 0x0009
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
OTHER_ADDRESS = 0x802C  # RFC 5780: the server's alternate address (it can honour CHANGE-REQUEST)

_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)

# Parse cost is bounded: no answer or request we deal in is near these sizes (a Binding response
# is < 100 bytes), and a forged 64 KB message of 16k attributes used to cost ~29 ms to parse.
MAX_MESSAGE_SIZE = 1500
MAX_ATTRIBUTES = 32
# Requests a relay answers: plain Binding requests of a sane size (RFC 8489 asks senders to stay
# under 576 bytes without path MTU knowledge); the answer is then never much larger than the request.
MAX_BINDING_REQUEST = 548

# Retransmission (RFC 8489 section 6.2.1), with WebRTC's 250 ms initial RTO.
INITIAL_RTO = 0.25
MAX_SENDS = 7  # Rc
LAST_WAIT_FACTOR = 16  # Rm: after the last send, wait Rm * initial RTO


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


# Attribute value codecs: decode(value, transaction_id) -> object, encode(object, transaction_id) -> bytes.


def _decode_address(value: bytes, _tid: bytes) -> Address:
    if len(value) not in (8, 20) or value[1] != (1 if len(value) == 8 else 2):  # family 1 = IPv4, 2 = IPv6
        raise ValueError(f"STUN address attribute: bad family or length {len(value)}")
    return str(ipaddress.ip_address(bytes(value[4:]))), int.from_bytes(value[2:4], "big")


def _encode_address(addr: Address, _tid: bytes) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, addr[1]) + ip.packed


def _xor(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask, strict=True))


def _decode_xor_address(value: bytes, tid: bytes) -> Address:
    if len(value) not in (8, 20):
        raise ValueError(f"STUN XOR address attribute of bad length {len(value)}")
    mask = _COOKIE_BYTES[:2] + (_COOKIE_BYTES + tid)[: len(value) - 4]
    return _decode_address(value[:2] + _xor(value[2:], mask), tid)


def _encode_xor_address(addr: Address, tid: bytes) -> bytes:
    plain = _encode_address(addr, tid)
    return plain[:2] + _xor(plain[2:], _COOKIE_BYTES[:2] + (_COOKIE_BYTES + tid)[: len(plain) - 4])


def _decode_text(value: bytes, _tid: bytes) -> str:
    return value.decode("utf-8")  # UnicodeDecodeError is a ValueError


def _decode_uint32(value: bytes, _tid: bytes) -> int:
    if len(value) != 4:
        raise ValueError("STUN 32-bit attribute must be 4 bytes")
    return int.from_bytes(value, "big")


def _decode_error_code(value: bytes, _tid: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise ValueError("STUN ERROR-CODE too short")
    return (value[2] & 0x07) * 100 + value[3], _decode_text(value[4:], _tid)


def _encode_error_code(error: tuple[int, str], _tid: bytes) -> bytes:
    return struct.pack("!HBB", 0, error[0] // 100, error[0] % 100) + error[1].encode("utf-8")


_Decoder = Callable[[bytes, bytes], Any]
_Encoder = Callable[[Any, bytes], bytes]
_RAW: tuple[_Decoder, _Encoder] = (lambda v, _t: bytes(v), lambda v, _t: bytes(v))
_ADDRESS: tuple[_Decoder, _Encoder] = (_decode_address, _encode_address)
_TEXT: tuple[_Decoder, _Encoder] = (_decode_text, lambda text, _t: text.encode("utf-8"))
_UINT32: tuple[_Decoder, _Encoder] = (_decode_uint32, lambda n, _t: struct.pack("!I", n))
ATTRIBUTES: dict[int, tuple[str, _Decoder, _Encoder]] = {
    MAPPED_ADDRESS: ("MAPPED-ADDRESS", *_ADDRESS),
    CHANGE_REQUEST: ("CHANGE-REQUEST", *_UINT32),
    MESSAGE_INTEGRITY: ("MESSAGE-INTEGRITY", *_RAW),
    ERROR_CODE: ("ERROR-CODE", _decode_error_code, _encode_error_code),
    XOR_MAPPED_ADDRESS: ("XOR-MAPPED-ADDRESS", _decode_xor_address, _encode_xor_address),
    SOFTWARE: ("SOFTWARE", *_TEXT),
    FINGERPRINT: ("FINGERPRINT", *_UINT32),
    OTHER_ADDRESS: ("OTHER-ADDRESS", *_ADDRESS),
}
_BY_NAME: dict[str, tuple[int, _Encoder]] = {name: (t, enc) for t, (name, _d, enc) in ATTRIBUTES.items()}


def _attribute_type(name: str) -> tuple[int, _Encoder]:
    if name in _BY_NAME:
        return _BY_NAME[name]
    if re.fullmatch(r"0x[0-9A-Fa-f]{4}", name):
        return int(name, 16), _RAW[1]  # an unknown attribute kept as "0xNNNN" -> raw bytes
    raise ValueError(f"unknown STUN attribute name {name!r}")


def _fingerprint(data: bytes) -> int:
    return (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


@dataclass
class StunMessage:
    """One STUN message: ``message_type`` is the 14-bit type (method and class), e.g. BINDING_SUCCESS."""

    message_type: int
    transaction_id: bytes
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def is_response(self) -> bool:
        """Success or error response: class bit C1 (0x0100) is set."""
        return bool(self.message_type & 0x0100)

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS, falling back to MAPPED-ADDRESS (RFC 3489 servers)."""
        addr = self.attributes.get("XOR-MAPPED-ADDRESS") or self.attributes.get("MAPPED-ADDRESS")
        return addr if addr is None else (str(addr[0]), int(addr[1]))

    def encode(self, fingerprint: bool = False) -> bytes:
        """Serialize; a FINGERPRINT attribute in ``attributes`` is ignored, ``fingerprint=True`` appends one."""
        if len(self.transaction_id) != 12 or not 0 <= self.message_type <= 0x3FFF:
            raise ValueError("STUN transaction id must be 12 bytes and the type 14 bits")
        body = bytearray()
        for name, obj in self.attributes.items():
            if name == "FINGERPRINT":
                continue
            attr_type, encoder = _attribute_type(name)
            value = encoder(obj, self.transaction_id)
            if len(value) > 0xFFFF:
                raise ValueError(f"STUN attribute {name} too long")
            body += struct.pack("!HH", attr_type, len(value)) + value + bytes(_pad(len(value)))
        length = len(body) + (8 if fingerprint else 0)
        data = struct.pack("!HHI", self.message_type, length, MAGIC_COOKIE) + self.transaction_id + bytes(body)
        if fingerprint:
            data += struct.pack("!HHI", FINGERPRINT, 4, _fingerprint(data))
        return data

    @classmethod
    def parse(cls, data: bytes) -> StunMessage:
        """Parse one whole datagram. Raises ValueError for anything malformed."""
        if len(data) < HEADER_LENGTH:
            raise ValueError(f"STUN message too short ({len(data)} bytes)")
        if len(data) > MAX_MESSAGE_SIZE:
            raise ValueError(f"STUN message too long ({len(data)} bytes, at most {MAX_MESSAGE_SIZE})")
        message_type, length, cookie = struct.unpack("!HHI", data[:8])
        if message_type & 0xC000:
            raise ValueError("STUN message must start with two zero bits")
        if cookie != MAGIC_COOKIE:
            raise ValueError(f"STUN magic cookie mismatch (0x{cookie:08X})")
        if length % 4 or HEADER_LENGTH + length != len(data):
            raise ValueError(f"STUN length {length} does not match datagram of {len(data)} bytes")
        tid = bytes(data[8:20])
        attributes: dict[str, Any] = {}
        pos = HEADER_LENGTH
        count = 0
        while pos < len(data):
            if "FINGERPRINT" in attributes:
                raise ValueError("STUN attribute after FINGERPRINT")
            count += 1
            if count > MAX_ATTRIBUTES:
                raise ValueError(f"STUN message with more than {MAX_ATTRIBUTES} attributes")
            attr_type, attr_len = struct.unpack("!HH", data[pos : pos + 4])
            end = pos + 4 + attr_len
            if end + _pad(attr_len) > len(data):
                raise ValueError(f"STUN attribute 0x{attr_type:04X} overflows the message")
            value = bytes(data[pos + 4 : end])
            name, decoder, _enc = ATTRIBUTES.get(attr_type, (f"0x{attr_type:04X}", *_RAW))
            if attr_type == FINGERPRINT and _decode_uint32(value, tid) != _fingerprint(bytes(data[:pos])):
                raise ValueError("STUN FINGERPRINT mismatch")
            if name not in attributes:  # RFC 8489: only the first of duplicates counts
                attributes[name] = decoder(value, tid)
            pos = end + _pad(attr_len)
        return cls(message_type=message_type, transaction_id=tid, attributes=attributes)


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test for the shared UDP socket (QUIC always sets 0x40 or 0x80 in byte 0)."""
    if len(data) < HEADER_LENGTH or data[0] & 0xC0:
        return False
    length = (data[2] << 8) | data[3]
    return length % 4 == 0 and HEADER_LENGTH + length == len(data) and data[4:8] == _COOKIE_BYTES


def header_transaction_id(data: bytes) -> bytes | None:
    """The transaction id of a datagram that passes the cheap header check (``is_stun``), else None.
    A node looks it up among its pending transactions before parsing anything more: unsolicited
    STUN is dropped here."""
    return bytes(data[8:20]) if is_stun(data) else None


def binding_answer(data: bytes, addr: Address) -> bytes | None:
    """A relay's answer to one datagram: a Binding success for a Binding request of sane size,
    None (drop) for anything else, decided on the header before any attribute is parsed."""
    if len(data) > MAX_BINDING_REQUEST or not is_stun(data) or (data[0] << 8 | data[1]) != BINDING_REQUEST:
        return None
    try:
        message = StunMessage.parse(data)
    except ValueError:
        return None
    return binding_success(message.transaction_id, addr)


def binding_request(transaction_id: bytes, fingerprint: bool = True) -> bytes:
    return StunMessage(BINDING_REQUEST, transaction_id).encode(fingerprint=fingerprint)


def binding_success(transaction_id: bytes, mapped: Address) -> bytes:
    """The relay's STUN server answer: XOR-MAPPED-ADDRESS + SOFTWARE + FINGERPRINT."""
    attrs: dict[str, Any] = {"XOR-MAPPED-ADDRESS": mapped, "SOFTWARE": SOFTWARE_NAME}
    return StunMessage(BINDING_SUCCESS, transaction_id, attrs).encode(fingerprint=True)


def binding_error(transaction_id: bytes, code: int, reason: str) -> bytes:
    attrs: dict[str, Any] = {"ERROR-CODE": (code, reason), "SOFTWARE": SOFTWARE_NAME}
    return StunMessage(BINDING_ERROR, transaction_id, attrs).encode(fingerprint=True)


class StunTransaction:
    """Client side of one Binding transaction over UDP (RFC 8489 section 6.2.1).

    Sends at t, t+RTO, t+3*RTO, ... (RTO doubling from 250 ms), at most ``max_sends`` times, then
    waits ``LAST_WAIT_FACTOR`` * initial RTO for a late answer before ``failed`` becomes True.
    """

    def __init__(
        self, server: Address, now: float, random: Callable[[int], bytes] = os.urandom, rto: float = INITIAL_RTO
    ) -> None:
        self.server = server
        self.transaction_id = random(12)
        self.result: Address | None = None
        self.response: StunMessage | None = None
        self.responder: Address | None = None
        self.error: str | None = None
        self.failed = False
        self.sends = 0
        self._initial_rto = rto
        self._rto = rto
        self._max_sends = MAX_SENDS
        self._request = binding_request(self.transaction_id)
        self._pending = 1
        self._timer: float | None = now + rto

    @property
    def done(self) -> bool:
        return self.result is not None or self.failed

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        if self.done:
            self._pending = 0
        out = [(self._request, self.server) for _ in range(self._pending)]
        self.sends += self._pending
        self._pending = 0
        return out

    def get_timer(self) -> float | None:
        return None if self.done else self._timer

    def handle_timer(self, now: float) -> None:
        if self.done or self._timer is None or now < self._timer:
            return
        if self.sends + self._pending >= self._max_sends:
            self.failed = True
            self.error = f"no answer after {self._max_sends} sends"
            self._timer = None
            return
        self._pending += 1
        self._rto *= 2
        last = self.sends + self._pending >= self._max_sends
        self._timer = now + (LAST_WAIT_FACTOR * self._initial_rto if last else self._rto)

    def receive(self, message: StunMessage, addr: Address) -> bool:
        """Feed a parsed message; True if it answers this transaction (whatever the outcome)."""
        if message.transaction_id != self.transaction_id or not message.is_response:
            return False
        if self.done:
            return True  # a late duplicate answer
        self.response = message
        self.responder = addr
        self._timer = None
        if message.message_type == BINDING_SUCCESS and message.mapped_address is not None:
            self.result = message.mapped_address
        else:
            self.failed = True
            err = message.attributes.get("ERROR-CODE")
            self.error = f"error response {err[0]} {err[1]}" if err else "response without a mapped address"
        return True
