"""QUIC address validation (Retry, RFC 9000 section 8.1) for the node's server side, sans-IO.

Every node listens on a public UDP port and a QUIC Initial can come from a forged address. Under load
the endpoint answers an Initial without a token by a stateless Retry carrying a token, and only a
client that echoes a valid token (so it receives at the address it claims) gets a connection slot.
When the node is not under load, Initials are accepted directly (no extra round trip).

``RetryTokens``: a token is ``version | issued-at (ms, 8 bytes) | len | original destination CID |
HMAC-SHA256 tag (16 bytes)``; the tag covers those fields, the client's address and the Retry's
source CID (which the client must use as its new destination CID), keyed by a per-process random
secret. A token is good for ``TOKEN_LIFETIME`` seconds (clients echo it at once), only from the
address it was issued to and only for that connection id.

``RetryPolicy``: when to require a token: when the half-open (accepted, not yet authenticated)
connections reach a quarter of their cap, and for ``HOLD_SEC`` after that, for every source; and for a
source that already holds half of its per-source share. ``now`` is any monotonic clock.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct

TOKEN_VERSION = 1
TOKEN_LIFETIME = 10.0
TAG_SIZE = 16
SECRET_SIZE = 32
MAX_CID_SIZE = 20
CLOCK_SKEW = 1.0  # a token "issued" further in the future than this is refused
HOLD_SEC = 5.0

Address = tuple[str, int]


def _encode_address(address: Address) -> bytes:
    host, port = address[0], int(address[1])
    try:
        raw = ipaddress.ip_address(host).packed
    except ValueError:
        raw = host.encode("utf-8", "replace")
    return bytes([len(raw) & 0xFF]) + raw + struct.pack("!H", port & 0xFFFF)


class RetryTokens:
    """Mints and checks address-bound, time-limited Retry tokens (HMAC with a per-process secret)."""

    def __init__(self, secret: bytes | None = None, lifetime: float = TOKEN_LIFETIME) -> None:
        self._secret = secret if secret is not None else os.urandom(SECRET_SIZE)
        self.lifetime = lifetime

    def _tag(self, body: bytes, address: Address, retry_source_cid: bytes) -> bytes:
        message = body + _encode_address(address) + bytes([len(retry_source_cid)]) + retry_source_cid
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:TAG_SIZE]

    def mint(self, address: Address, original_destination_cid: bytes, retry_source_cid: bytes, now: float) -> bytes:
        if len(original_destination_cid) > MAX_CID_SIZE or len(retry_source_cid) > MAX_CID_SIZE:
            raise ValueError("a QUIC connection id is at most 20 bytes")
        issued = max(0, int(now * 1000))
        body = (
            bytes([TOKEN_VERSION])
            + struct.pack("!Q", issued)
            + bytes([len(original_destination_cid)])
            + original_destination_cid
        )
        return body + self._tag(body, address, retry_source_cid)

    def check(self, token: bytes, address: Address, destination_cid: bytes, now: float) -> bytes | None:
        """The original destination CID if ``token`` was minted by us for ``address`` and the Retry
        whose source CID the client now uses as ``destination_cid``, less than ``lifetime`` ago;
        else None."""
        if len(token) < 1 + 8 + 1 + TAG_SIZE or token[0] != TOKEN_VERSION:
            return None
        odcid_size = token[9]
        if odcid_size > MAX_CID_SIZE or len(token) != 10 + odcid_size + TAG_SIZE:
            return None
        body, tag = token[:-TAG_SIZE], token[-TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(body, address, destination_cid)):
            return None
        (issued_ms,) = struct.unpack("!Q", token[1:9])
        age = now - issued_ms / 1000
        if age > self.lifetime or age < -CLOCK_SKEW:
            return None
        return bytes(token[10 : 10 + odcid_size])


class RetryPolicy:
    """Decides, per Initial without a token, whether the endpoint answers with a Retry."""

    def __init__(self, max_half_open: int, max_half_open_per_source: int, hold: float = HOLD_SEC) -> None:
        self.total_threshold = max(1, max_half_open // 4)
        self.source_threshold = max(1, max_half_open_per_source // 2)
        self.hold = hold
        self._under_load_until = float("-inf")

    def under_load(self, now: float) -> bool:
        return now < self._under_load_until

    def require_retry(self, half_open_total: int, half_open_from_source: int, now: float) -> bool:
        if half_open_total >= self.total_threshold:
            self._under_load_until = now + self.hold
        return self.under_load(now) or half_open_from_source >= self.source_threshold
