"""Signed LAN announcements: "node X listens for QUIC on port P and is in channels R1, R2, ...".

Sans-IO: no sockets, no asyncio, no clock (``now`` is always passed in). ``daemon/lan.py`` pumps
these datagrams over IPv4 multicast.

Wire format (one UDP datagram, at most ``MAX_DATAGRAM_SIZE`` = 1200 bytes)::

    b"KP2PLAN1" || body || signature

    body      = compact UTF-8 JSON object:
                {"v": "kachery-p2p/1",        protocol the node speaks over QUIC
                 "n": "<64 lower-case hex>",  node id = raw Ed25519 public key
                 "l": "<label>",              free text, at most 64 characters, no control characters
                 "p": <1..65535>,             QUIC port (the IP is the datagram's source address)
                 "r": ["<base64url>", ...],   at most 16 rendezvous ids, 32 bytes each, unpadded
                 "t": <unix time>,            when the announcement was made (sender's wall clock)
                 "x": <unix time>}            when it expires; x - t is in (0, 600] seconds
                Unknown keys are ignored (they are signed, so a later version may add some).
    signature = 64-byte Ed25519 signature by the node key over (magic || body)

Rendezvous ids travel as base64url (43 characters) instead of hex (64) so that 16 of them fit in a
datagram; in ``Announcement`` they are lower-case hex like everywhere else.

Size rules of ``encode_announcement`` (the caller's input never makes it fail for being long):

- the label is cleaned (control characters become U+FFFD), cut to 64 characters, and then, only if
  the datagram would still exceed 1200 bytes (possible with 16 ids and a label of 4-byte characters),
  characters are dropped from its end until it fits;
- more than 16 rendezvous ids is a LocalProtocolError: silently dropping a channel would hide it
  from the LAN. The caller picks which 16 to send (``daemon/lan.py`` rotates through them).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import LocalProtocolError, RemoteProtocolError
from ..ids import is_hex64
from ..quic.identity import verify_signature

MAGIC = b"KP2PLAN1"
PROTOCOL = "kachery-p2p/1"
MAX_DATAGRAM_SIZE = 1200
MAX_LABEL_CHARS = 64
MAX_RENDEZVOUS_IDS = 16
MAX_LIFETIME = 600.0
DEFAULT_LIFETIME = 60.0
SIGNATURE_SIZE = 64

_MAX_PROTOCOL_CHARS = 32
_LIFETIME_TOLERANCE = 1e-3  # float rounding in t + lifetime
_B64_ID_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")
_PROTOCOL_RE = re.compile(r"^[\x21-\x7e]{1,32}\Z")
_REPLACEMENT = "\ufffd"


class Signer(Protocol):
    """What ``encode_announcement`` needs from a ``NodeIdentity``."""

    @property
    def node_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Announcement:
    """A decoded, signature-checked announcement. ``rendezvous_ids`` are lower-case hex."""

    node_id: str
    label: str
    quic_port: int
    rendezvous_ids: tuple[str, ...]
    timestamp: float
    expires: float
    protocol: str = PROTOCOL

    @property
    def lifetime(self) -> float:
        return self.expires - self.timestamp


def _is_bad_char(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs")


def clean_label(label: str) -> str:
    """The label as it will be sent: control characters replaced, at most 64 characters."""
    return "".join(_REPLACEMENT if _is_bad_char(ch) else ch for ch in label[:MAX_LABEL_CHARS])


def _id_to_wire(rendezvous_id: str) -> str:
    return base64.urlsafe_b64encode(bytes.fromhex(rendezvous_id)).rstrip(b"=").decode("ascii")


def _id_from_wire(text: str) -> str | None:
    if not _B64_ID_RE.match(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32 or _id_to_wire(raw.hex()) != text:  # one spelling per id (no stray low bits)
        return None
    return raw.hex()


def _check_number(value: Any, what: str, remote: bool) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        number = float(value)  # OverflowError for a huge int
        if not math.isfinite(number):
            raise ValueError
    except (ValueError, OverflowError):
        message = f"announcement {what} is not a finite number"
        raise _bad(message) if remote else LocalProtocolError(message) from None
    return number


def encode_announcement(
    identity: Signer,
    label: str,
    quic_port: int,
    rendezvous_ids: Iterable[str],
    now: float,
    lifetime: float = DEFAULT_LIFETIME,
) -> bytes:
    """One signed announcement datagram (<= 1200 bytes). See the module docstring for the rules.

    LocalProtocolError for a bad port, a malformed or more than 16 rendezvous ids (duplicates are
    dropped first), a non-finite ``now``, or a lifetime outside (0, 600] seconds.
    """
    if isinstance(quic_port, bool) or not isinstance(quic_port, int) or not 1 <= quic_port <= 65535:
        raise LocalProtocolError(f"cannot announce QUIC port {quic_port!r}")
    now = _check_number(now, "time", remote=False)
    lifetime = _check_number(lifetime, "lifetime", remote=False)
    if not 0 < lifetime <= MAX_LIFETIME:
        raise LocalProtocolError(f"announcement lifetime must be in (0, {MAX_LIFETIME:g}] s, not {lifetime}")
    ids: list[str] = []
    for rid in rendezvous_ids:
        if not is_hex64(rid, any_case=True):
            raise LocalProtocolError(f"not a rendezvous id: {rid!r}")
        if rid.lower() not in ids:
            ids.append(rid.lower())
    if len(ids) > MAX_RENDEZVOUS_IDS:
        raise LocalProtocolError(f"an announcement holds at most {MAX_RENDEZVOUS_IDS} rendezvous ids, not {len(ids)}")
    if not isinstance(label, str):
        raise LocalProtocolError("announcement label must be a string")
    body: dict[str, Any] = {
        "v": PROTOCOL,
        "n": identity.node_id.lower(),
        "l": clean_label(label),
        "p": quic_port,
        "r": [_id_to_wire(rid) for rid in ids],
        "t": now,
        "x": now + lifetime,
    }
    while True:
        data = MAGIC + json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        if len(data) + SIGNATURE_SIZE <= MAX_DATAGRAM_SIZE:
            break
        if not body["l"]:  # cannot happen with finite times, but never loop forever
            raise LocalProtocolError("announcement does not fit in one datagram")
        body["l"] = body["l"][:-1]
    signature = identity.sign(data)
    if len(signature) != SIGNATURE_SIZE:
        raise LocalProtocolError("node signature is not 64 bytes: not an Ed25519 identity")
    return data + signature


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_announcement(data: bytes, now: float, max_clock_skew: float = 120.0) -> Announcement:
    """Parse and check one datagram; RemoteProtocolError (code "bad_announcement") if unusable.

    Checks, cheapest first: size, magic, JSON and field types, expiry (``now > expires``), a timestamp
    more than ``max_clock_skew`` seconds ahead of ``now``, lifetime, and finally the signature.
    """
    if len(data) > MAX_DATAGRAM_SIZE:
        raise _bad(f"announcement too large ({len(data)} bytes > {MAX_DATAGRAM_SIZE})")
    if not data.startswith(MAGIC):
        raise _bad("not a kachery-p2p LAN announcement (wrong magic)")
    if len(data) < len(MAGIC) + 2 + SIGNATURE_SIZE:
        raise _bad("announcement truncated")
    signed, signature = bytes(data[:-SIGNATURE_SIZE]), bytes(data[-SIGNATURE_SIZE:])
    try:
        body = json.loads(signed[len(MAGIC) :].decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"announcement body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("announcement body is not a JSON object")

    protocol = body.get("v")
    if not isinstance(protocol, str) or not _PROTOCOL_RE.match(protocol):
        raise _bad("announcement protocol 'v' missing or malformed")
    node_id = body.get("n")
    if not is_hex64(node_id):
        raise _bad("announcement node id 'n' is not 64 lower-case hex digits")
    label = body.get("l")
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS or any(_is_bad_char(c) for c in label):
        raise _bad("announcement label 'l' is not text of at most 64 printable characters")
    port = body.get("p")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _bad("announcement port 'p' is not in 1..65535")
    wire_ids = body.get("r")
    if not isinstance(wire_ids, list) or len(wire_ids) > MAX_RENDEZVOUS_IDS:
        raise _bad(f"announcement 'r' is not a list of at most {MAX_RENDEZVOUS_IDS} rendezvous ids")
    ids: list[str] = []
    for item in wire_ids:
        rid = _id_from_wire(item) if isinstance(item, str) else None
        if rid is None:
            raise _bad("announcement holds a malformed rendezvous id")
        if rid not in ids:
            ids.append(rid)
    timestamp = _check_number(body.get("t"), "timestamp 't'", remote=True)
    expires = _check_number(body.get("x"), "expiry 'x'", remote=True)

    if now > expires:
        raise _bad(f"announcement expired {now - expires:.1f} s ago")
    if timestamp > now + max_clock_skew:
        raise _bad(f"announcement timestamp is {timestamp - now:.1f} s in the future")
    if expires <= timestamp:
        raise _bad("announcement expires before it was made")
    if expires - timestamp > MAX_LIFETIME + _LIFETIME_TOLERANCE:
        raise _bad(f"announcement lifetime {expires - timestamp:.0f} s exceeds {MAX_LIFETIME:g} s")
    if not verify_signature(node_id, signature, signed):
        raise _bad("announcement signature does not match its node id")
    return Announcement(
        node_id=node_id,
        label=label,
        quic_port=port,
        rendezvous_ids=tuple(ids),
        timestamp=timestamp,
        expires=expires,
        protocol=protocol,
    )


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code="bad_announcement")


def shared_rendezvous(a: Announcement, mine: Iterable[str]) -> list[str]:
    """The rendezvous ids of ``mine`` (in my order, lower-case) that the announcing node also has."""
    theirs = set(a.rendezvous_ids)
    out: list[str] = []
    for rid in mine:
        rid = rid.lower()
        if rid in theirs and rid not in out:
            out.append(rid)
    return out


class AnnouncementTracker:
    """The latest valid announcement of each node, with replay protection and expiry.

    For every node id it remembers the newest timestamp ever accepted (the high-water mark) and only
    accepts strictly newer announcements, so a replayed old datagram can never replace a newer one
    (and so cannot move a node to the attacker's choice of address). The mark outlives the
    announcement itself by ``MAX_LIFETIME`` (+1) seconds: any replay older than the mark has expired
    by then (its lifetime is at most 600 s), so forgetting the mark afterwards is safe.

    Consequence: when a node's wall clock steps back, its announcements are ignored until its clock
    passes its previous timestamp again (``daemon/lan.py`` keeps its own timestamps increasing).

    At most ``max_nodes`` nodes are tracked; announcements from further nodes are refused (rather
    than evicting a mark, which would reopen the replay window).
    """

    def __init__(self, max_nodes: int = 4096) -> None:
        self.max_nodes = max_nodes
        self._latest: dict[str, Announcement] = {}
        self._high_water: dict[str, float] = {}

    def accept(self, a: Announcement, now: float) -> bool:
        """True if ``a`` is new information (then it is stored); False if stale, replayed or expired."""
        if now > a.expires:
            return False
        mark = self._high_water.get(a.node_id)
        if mark is not None and a.timestamp <= mark:
            return False
        if mark is None and len(self._high_water) >= self.max_nodes:
            self.forget_expired(now)
            if len(self._high_water) >= self.max_nodes:
                return False
        self._latest[a.node_id] = a
        self._high_water[a.node_id] = a.timestamp
        return True

    def forget_expired(self, now: float) -> list[Announcement]:
        """Drop announcements that expired; returns them (those nodes are gone from the LAN)."""
        gone = [a for a in self._latest.values() if now > a.expires]
        for a in gone:
            del self._latest[a.node_id]
        for node_id, mark in list(self._high_water.items()):
            if node_id not in self._latest and now > mark + MAX_LIFETIME + 1.0:
                del self._high_water[node_id]
        return gone

    def get(self, node_id: str) -> Announcement | None:
        return self._latest.get(node_id)

    def known(self) -> list[Announcement]:
        """The latest announcement of every tracked node (call ``forget_expired`` first for fresh ones)."""
        return list(self._latest.values())
