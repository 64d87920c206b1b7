"""The signed rendezvous record a node publishes to its relays, and the relays hand to channel peers.

Sans-IO: no sockets, no clock (``now`` is passed in). The record travels as a JSON object in the
node's authenticated QUIC session with the relay::

    {"version": "kachery-p2p/rendezvous/1",
     "node_id": "<64 lower-case hex>",            Ed25519 public key of the publisher
     "label": "<at most 64 printable characters>",
     "candidates": ["203.0.113.7:4433", "[2001:db8::1]:4433", ...],   at most 8, canonical spelling
     "rendezvous_digest": "<64 hex>",             sha256 over the sorted set of rendezvous ids
     "timestamp": <unix time>, "expires": <unix time>,   expires - timestamp in (0, 600] s
     "rendezvous_ids": ["<64 hex>", ...],         at most 64; NOT signed directly (see below)
     "signature": "<128 hex>"}                    Ed25519 over SIGN_CONTEXT || canonical JSON

The signature covers every key except "signature" and "rendezvous_ids", unknown keys too (a later
version may add some; older readers ignore them). Canonical JSON: ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` of the parsed object.

Why the ids are committed to by a digest instead of being signed: the relay needs them to index the
node, but a channel peer that looks the node up must not learn the node's OTHER rendezvous ids (it
could then look those up and enumerate members and addresses of channels it is not in). The relay
checks the ids against the digest when the node publishes, and hands peers the "shared" form
(``RendezvousRecord.shared_dict()``: no "rendezvous_ids" key), whose signature still verifies.
Candidates are unicast IP literals (no DNS), spelled canonically: "1.2.3.4:5", "[2001:db8::1]:5".
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from ..ids import is_hex64
from ..quic.identity import verify_signature
from .announcements import Signer, clean_label

VERSION = "kachery-p2p/rendezvous/1"
SIGN_CONTEXT = b"kachery-p2p rendezvous record v1\x00"
DIGEST_CONTEXT = b"kachery-p2p rendezvous digest v1\x00"
MAX_RENDEZVOUS_IDS = 64
MAX_CANDIDATES = 8
MAX_LIFETIME = 600.0
DEFAULT_LIFETIME = 300.0
MAX_SIGNED_BYTES = 4096
MAX_CANDIDATE_CHARS = 64

_LIFETIME_TOLERANCE = 1e-3
_HEX128_RE = re.compile(r"[0-9a-f]{128}")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
_UNSIGNED_KEYS = ("signature", "rendezvous_ids")


@dataclass(frozen=True)
class RendezvousRecord:
    """A decoded, signature-checked record. ``rendezvous_ids`` is empty for the shared form.

    ``wire`` is the canonical JSON of the shared form (signature included, ids left out): what a
    relay hands to the node's channel peers, byte for byte as signed.
    """

    node_id: str
    label: str
    rendezvous_ids: tuple[str, ...]
    candidates: tuple[str, ...]
    timestamp: float
    expires: float
    rendezvous_digest: str = ""
    signature: str = ""
    wire: str = field(default="", compare=False, repr=False)

    @property
    def lifetime(self) -> float:
        return self.expires - self.timestamp

    def lists_its_ids(self) -> bool:
        """True if ``rendezvous_ids`` is the full set the signature commits to (the published form)."""
        return bool(self.rendezvous_digest) and rendezvous_digest(self.rendezvous_ids) == self.rendezvous_digest

    def shared_dict(self) -> dict[str, Any]:
        """The shared form as a fresh JSON-able dict (decodes with ``decode_record``)."""
        if not self.wire:
            raise LocalProtocolError("this record was not made by decode_record: it has no signed form")
        result: dict[str, Any] = json.loads(self.wire)
        return result


def rendezvous_digest(rendezvous_ids: Iterable[str]) -> str:
    """sha256 over the sorted set of rendezvous ids (lower-case hex in, lower-case hex out)."""
    raw = sorted({bytes.fromhex(rid) for rid in rendezvous_ids})
    return hashlib.sha256(DIGEST_CONTEXT + b"".join(raw)).hexdigest()


def parse_candidate(text: str) -> tuple[str, int]:
    """("host", port) from "a.b.c.d:port" or "[v6]:port"; ValueError if it is not a usable address."""
    if not isinstance(text, str) or len(text) > MAX_CANDIDATE_CHARS or "%" in text:
        raise ValueError(f"not an address candidate: {text!r}")
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"not an address candidate: {text!r}")
        address = ipaddress.IPv6Address(host)
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"not an address candidate: {text!r}")
        address = ipaddress.IPv4Address(host)
    if not _PORT_RE.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"bad port in address candidate {text!r}")
    if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"address candidate {text!r} is not a unicast address")
    return str(address), int(port)


def format_candidate(host: str, port: int) -> str:
    """The canonical "host:port" spelling of an IP address and port (ValueError if unusable)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"bad port {port!r}")
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    parse_candidate(text)  # the same rules as for a received candidate
    return text


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _signed_bytes(obj: Mapping[str, Any]) -> bytes:
    return SIGN_CONTEXT + _canonical({k: v for k, v in obj.items() if k not in _UNSIGNED_KEYS})


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def encode_record(
    identity: Signer,
    label: str,
    rendezvous_ids: Iterable[str],
    candidates: Iterable[str],
    now: float,
    lifetime: float = DEFAULT_LIFETIME,
) -> dict[str, Any]:
    """The signed record (published form) as a JSON-able dict.

    The label is cleaned and cut to 64 characters; ids are lower-cased and candidates respelled
    canonically, duplicates dropped. LocalProtocolError for a malformed id or candidate, more than
    64 ids or 8 candidates (the caller chooses which), a non-finite ``now`` or a lifetime outside
    (0, 600] seconds.
    """
    start, span = _finite(now), _finite(lifetime)
    if start is None or span is None:
        raise LocalProtocolError("record time and lifetime must be finite numbers")
    if not 0 < span <= MAX_LIFETIME:
        raise LocalProtocolError(f"record lifetime must be in (0, {MAX_LIFETIME:g}] s, not {span}")
    if not isinstance(label, str):
        raise LocalProtocolError("record label must be a string")
    ids: list[str] = []
    for rid in rendezvous_ids:
        if not is_hex64(rid, any_case=True):
            raise LocalProtocolError(f"not a rendezvous id: {rid!r}")
        if rid.lower() not in ids:
            ids.append(rid.lower())
    if len(ids) > MAX_RENDEZVOUS_IDS:
        raise LocalProtocolError(f"a record holds at most {MAX_RENDEZVOUS_IDS} rendezvous ids, not {len(ids)}")
    spelled: list[str] = []
    for text in candidates:
        try:
            canonical = format_candidate(*parse_candidate(text))
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        if canonical not in spelled:
            spelled.append(canonical)
    if len(spelled) > MAX_CANDIDATES:
        raise LocalProtocolError(f"a record holds at most {MAX_CANDIDATES} candidates, not {len(spelled)}")
    obj: dict[str, Any] = {
        "version": VERSION,
        "node_id": identity.node_id.lower(),
        "label": clean_label(label),
        "candidates": spelled,
        "rendezvous_digest": rendezvous_digest(ids),
        "timestamp": start,
        "expires": start + span,
    }
    signature = identity.sign(_signed_bytes(obj))
    if len(signature) != 64:
        raise LocalProtocolError("node signature is not 64 bytes: not an Ed25519 identity")
    return {**obj, "rendezvous_ids": ids, "signature": signature.hex()}


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code="bad_request")


def _check_candidates(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise _bad(f"record 'candidates' is not a list of at most {MAX_CANDIDATES} addresses")
    for text in value:
        try:
            canonical = format_candidate(*parse_candidate(text))
        except ValueError:
            raise _bad(f"record candidate {str(text)[:80]!r} is not an IP address and port") from None
        if canonical != text:
            raise _bad(f"record candidate {text!r} is not spelled canonically ({canonical!r})")
    if len(set(value)) != len(value):
        raise _bad("record lists a candidate twice")
    return tuple(value)


def _check_ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_RENDEZVOUS_IDS:
        raise _bad(f"record 'rendezvous_ids' is not a list of at most {MAX_RENDEZVOUS_IDS} ids")
    if not all(is_hex64(rid) for rid in value):
        raise _bad("record holds a rendezvous id that is not 64 lower-case hex digits")
    if len(set(value)) != len(value):
        raise _bad("record lists a rendezvous id twice")
    return tuple(value)


def decode_record(obj: Mapping[str, Any], now: float, max_clock_skew: float = 120.0) -> RendezvousRecord:
    """Check a received record (published or shared form); RemoteProtocolError("bad_request") if bad.

    Checks, cheapest first: types and limits, the ids against the digest (when listed), expiry
    (``now > expires``), a timestamp more than ``max_clock_skew`` s ahead, the lifetime, the size,
    and last the signature.
    """
    if not isinstance(obj, Mapping) or not all(isinstance(key, str) for key in obj):
        raise _bad("a rendezvous record is a JSON object")
    if obj.get("version") != VERSION:
        raise _bad(f"record version is not {VERSION!r}")
    node_id = obj.get("node_id")
    if not is_hex64(node_id):
        raise _bad("record 'node_id' is not 64 lower-case hex digits")
    label = obj.get("label")
    if not isinstance(label, str) or clean_label(label) != label:
        raise _bad("record 'label' is not text of at most 64 printable characters")
    candidates = _check_candidates(obj.get("candidates"))
    digest = obj.get("rendezvous_digest")
    if not is_hex64(digest):
        raise _bad("record 'rendezvous_digest' is not 64 lower-case hex digits")
    ids: tuple[str, ...] = ()
    if "rendezvous_ids" in obj:
        ids = _check_ids(obj["rendezvous_ids"])
        if rendezvous_digest(ids) != digest:
            raise _bad("record 'rendezvous_ids' do not match its signed digest")
    signature = obj.get("signature")
    if not isinstance(signature, str) or not _HEX128_RE.fullmatch(signature):
        raise _bad("record 'signature' is not 128 lower-case hex digits")
    timestamp, expires = _finite(obj.get("timestamp")), _finite(obj.get("expires"))
    if timestamp is None or expires is None:
        raise _bad("record 'timestamp' or 'expires' is not a finite number")
    if now > expires:
        raise _bad(f"record expired {now - expires:.1f} s ago")
    if timestamp > now + max_clock_skew:
        raise _bad(f"record timestamp is {timestamp - now:.1f} s in the future")
    if expires <= timestamp:
        raise _bad("record expires before it was made")
    if expires - timestamp > MAX_LIFETIME + _LIFETIME_TOLERANCE:
        raise _bad(f"record lifetime {expires - timestamp:.0f} s exceeds {MAX_LIFETIME:g} s")
    shared = {k: v for k, v in obj.items() if k != "rendezvous_ids"}
    try:
        signed = _signed_bytes(shared)
        wire = _canonical(shared).decode()
    except (TypeError, ValueError, RecursionError):
        raise _bad("record holds a value that is not plain JSON") from None
    if len(signed) > MAX_SIGNED_BYTES:
        raise _bad(f"record too large ({len(signed)} bytes > {MAX_SIGNED_BYTES})")
    if not verify_signature(node_id, bytes.fromhex(signature), signed):
        raise _bad("record signature does not match its node id")
    return RendezvousRecord(
        node_id=node_id,
        label=label,
        rendezvous_ids=ids,
        candidates=candidates,
        timestamp=timestamp,
        expires=expires,
        rendezvous_digest=digest,
        signature=signature,
        wire=wire,
    )
