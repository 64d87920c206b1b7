"""Feed keys and signed messages chained to the previous signature by message number (sans-IO).

A signed message is, as in the original kachery-p2p::

    {"body": {"previousSignature": <128 hex, absent for #0>, "messageNumber": n, "message": {...},
              "timestamp": <ms since 1970>, "metaData": {"subfeedHash": <40 hex>}},
     "signature": <128 hex: Ed25519 by the feed key over the canonical JSON of body>}

Canonical JSON = sorted keys, no spaces, UTF-8 (the original's ``JSONStringifyDeterministic``). Unlike the
original, ``metaData.subfeedHash`` is required and signed, so a log cannot be replayed as another subfeed.
A reader checks every message in order with ``ChainVerifier``: number, previous signature, subfeed and
signature; the first failure says whether it is forged (bad signature, or signed for another subfeed),
reordered (a number out of sequence: missing, repeated or swapped messages) or malformed. A log that
ends before the count its sender announced is "truncated" (detected by the receiver, feeds_peers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .names import MAX_MESSAGE_BYTES, is_feed_id, is_subfeed_hash

_BODY_KEYS = {"previousSignature", "messageNumber", "message", "timestamp", "metaData"}
# A signed message line: the message itself plus the envelope (signatures, numbers, hashes).
MAX_SIGNED_BYTES = MAX_MESSAGE_BYTES + 1024


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


class FeedKey:
    """A feed's Ed25519 key pair; the feed id is the raw public key in hex."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.feed_id = raw.hex()

    @classmethod
    def generate(cls) -> FeedKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> FeedKey:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> str:
        return self.private_key.sign(data).hex()


def sign_message(
    key: FeedKey,
    subfeed_hash: str,
    number: int,
    previous_signature: str | None,
    message: dict[str, Any],
    timestamp_ms: int,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messageNumber": number,
        "message": message,
        "timestamp": timestamp_ms,
        "metaData": {"subfeedHash": subfeed_hash},
    }
    if previous_signature is not None:
        body["previousSignature"] = previous_signature
    return {"body": body, "signature": key.sign(canonical_json(body))}


class LogError(Exception):
    """A message that does not continue the log; ``kind`` is forged, reordered, truncated, malformed or too large."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_public_keys: dict[str, Ed25519PublicKey] = {}


def _public_key(feed_id: str) -> Ed25519PublicKey:
    key = _public_keys.get(feed_id)
    if key is None:
        if len(_public_keys) > 4096:
            _public_keys.clear()
        key = _public_keys[feed_id] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(feed_id))
    return key


def _hex(value: Any, length: int) -> bool:
    if not isinstance(value, str) or len(value) != length:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return value == value.lower()


@dataclass
class ChainVerifier:
    """The tail of a verified log: accepts only the message that continues it."""

    feed_id: str
    subfeed_hash: str
    count: int = 0
    last_signature: str | None = None

    def __post_init__(self) -> None:
        if not is_feed_id(self.feed_id) or not is_subfeed_hash(self.subfeed_hash):
            raise ValueError("bad feed id or subfeed hash")

    def check(self, signed: Any) -> dict[str, Any]:
        """Verify ``signed`` as message number ``count``; raise LogError, or return it (state unchanged)."""
        n = self.count
        if not isinstance(signed, dict) or set(signed) != {"body", "signature"}:
            raise LogError("malformed", f"message #{n} is not {{body, signature}}")
        body, signature = signed["body"], signed["signature"]
        if not isinstance(body, dict) or not set(body) <= _BODY_KEYS or not _hex(signature, 128):
            raise LogError("malformed", f"message #{n} has a malformed body or signature")
        number = body.get("messageNumber")
        if not isinstance(number, int) or isinstance(number, bool):
            raise LogError("malformed", f"message #{n} has no message number")
        if not isinstance(body.get("message"), dict):
            raise LogError("malformed", f"message #{n} is not a JSON object")
        timestamp = body.get("timestamp")
        if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
            raise LogError("malformed", f"message #{n} has no timestamp")
        meta = body.get("metaData")
        if not isinstance(meta, dict) or meta.get("subfeedHash") != self.subfeed_hash:
            raise LogError("forged", f"message #{n} was not signed for this subfeed")
        try:
            data = canonical_json(body)
        except (TypeError, ValueError):
            raise LogError("malformed", f"message #{n} is not plain JSON") from None
        if len(data) > MAX_SIGNED_BYTES:
            raise LogError("malformed", f"message #{n} is larger than {MAX_SIGNED_BYTES} bytes")
        try:
            _public_key(self.feed_id).verify(bytes.fromhex(signature), data)
        except InvalidSignature:
            raise LogError("forged", f"message #{n}: the signature is not the feed's") from None
        if number != n:
            raise LogError("reordered", f"expected message #{n}, got #{number}")
        if body.get("previousSignature") != self.last_signature:
            raise LogError("reordered", f"message #{n} does not follow message #{n - 1}")
        return signed

    def accept(self, signed: Any) -> dict[str, Any]:
        """check, then advance the tail."""
        self.check(signed)
        return self.advance(signed)

    def advance(self, signed: dict[str, Any]) -> dict[str, Any]:
        """Advance the tail over a message already checked (or just signed by us), without checking again."""
        self.count += 1
        self.last_signature = signed["signature"]
        return dict(signed)


def verify_log(feed_id: str, subfeed_hash: str, log: list[Any]) -> int:
    """The number of messages at the start of ``log`` that form a valid chain; raises nothing."""
    verifier = ChainVerifier(feed_id, subfeed_hash)
    for signed in log:
        try:
            verifier.accept(signed)
        except LogError:
            break
    return verifier.count
