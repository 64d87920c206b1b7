"""The peer protocol's messages (version ``kachery-p2p/1``), validated on arrival.

Authentication (see ``quic.auth``):
    server -> client, on the server's first unidirectional stream:
        {"op": "challenge", "nonce": hex32}
    client -> server, on the client's first bidirectional stream:
        {"op": "auth", "nodeId", "nonce", "signature", "label", "channelProofs": [hex64, ...]}
    server -> client:  {"ok": true, "label", "channelProofs": [...]}   (or an error, then close)

Requests, each on a new bidirectional stream opened by either side once authenticated:
    {"op": "has", "sha1", "head"?}            -> {"ok": true, "size", "manifestSha1"?, "head"?} + the file's
                                                 first n = min(head, HEAD_MAX, size) bytes as "head": n when
                                                 "head" was asked for (the whole file when n == size)
    {"op": "manifest", "sha1"}                -> {"ok": true, "length"} + manifest JSON bytes
    {"op": "get", "sha1", "start", "end"}     -> {"ok": true, "length"} + bytes [start, end)
    {"op": "channels", "nonce", "channelProofs"} -> {"ok": true, "channelProofs"}

Feed requests (channel peers only; see kachery_p2p.daemon.feeds_peers):
    {"op": "feed-has", "feedId", "subfeedHash"}         -> {"ok": true, "owner", "numMessages"}
    {"op": "feed-subscribe", "feedId", "subfeedHash", "position"}
        -> {"ok": true, "owner", "numMessages"} + signed messages from position, one JSON object a line,
           then every new message as it is appended, until either side ends the stream
    {"op": "feed-submit", "feedId", "subfeedHash", "message"} -> {"ok": true, "messageNumber"}
    {"op": "feed-unsubscribe", "feedId", "subfeedHash"}  -> {"ok": true}  (the subscription stream ends: FIN)

Relay requests (a node to a relay, or a relay to a node for "punch"):
    {"op": "publish", "record": {signed rendezvous record}}  -> {"ok": true, "observed": "ip:port"}
        with "frameToken": true also -> "frameToken": hex32 (relay frames must carry it from now on)
    {"op": "lookup", "rendezvousIds": [hex64, ...]}          -> {"ok": true, "peers": [{"record", "observed"}]}
    {"op": "connect", "target", "token", "candidates"}       -> {"ok": true, "candidates": [...]}
    {"op": "punch", "source", "token", "candidates"}         -> {"ok": true, "candidates": [...]}

Between two peers over their (relayed) session, after the plain punch failed (``daemon.birthday``):
    {"op": "birthday", "token", "mapping", "address"}       -> {"ok": true, "mapping", "address"} or error "busy"

Errors: {"ok": false, "code": one of ERROR_CODES, "message": text}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..error_codes import PEER_ERROR_CODES
from ..errors import RemoteProtocolError
from ..ids import HEX64_RE

ERROR_CODES = PEER_ERROR_CODES
MAX_PROOFS = 256
MAX_LABEL = 64
_HEX40 = re.compile(r"^[0-9a-f]{40}\Z")
_HEX64 = HEX64_RE
_HEX32 = re.compile(r"^[0-9a-f]{32}\Z")
_HEX128 = re.compile(r"^[0-9a-f]{128}\Z")



def is_hex32(text: str) -> bool:
    """32 lower-case hex digits (a 16-byte token or nonce)."""
    return _HEX32.match(text) is not None

def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code="bad_request")


def _sha1(value: Any) -> str:
    if not isinstance(value, str) or not _HEX40.match(value):
        raise _bad("sha1 must be 40 lower-case hex digits")
    return value


def _uint(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"{name} must be a non-negative integer")
    return value


def _hex(value: Any, pattern: re.Pattern[str], name: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(f"bad {name}")
    return value


def parse_proofs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOFS:
        raise _bad("channelProofs must be a list of at most 256 hashes")
    return tuple(_hex(item, _HEX64, "channel proof") for item in value)


def _label(value: Any) -> str:
    if not isinstance(value, str):
        raise _bad("label must be a string")
    return value[:MAX_LABEL]


@dataclass(frozen=True)
class Challenge:
    nonce: str


@dataclass(frozen=True)
class Auth:
    node_id: str
    nonce: str
    signature: str
    label: str
    channel_proofs: tuple[str, ...]


# The first bytes of a file come back with the answer to "has" when asked ("head"): a file this small in one
# round trip instead of two, and a larger one's first piece a round trip earlier. More than a fresh
# connection's first flight (RFC 9002: 10 packets), and small enough that asking every channel peer at once
# wastes little when several of them answer.
HEAD_MAX = 64 * 1024


@dataclass(frozen=True)
class Has:
    sha1: str
    head: int = 0  # the asker takes up to this many of the file's first bytes with the answer


@dataclass(frozen=True)
class GetManifest:
    sha1: str


@dataclass(frozen=True)
class GetRange:
    sha1: str
    start: int
    end: int


@dataclass(frozen=True)
class ChannelsUpdate:
    nonce: str
    channel_proofs: tuple[str, ...]


@dataclass(frozen=True)
class Publish:
    record: dict[str, Any]
    frame_token: bool = False


@dataclass(frozen=True)
class Lookup:
    rendezvous_ids: tuple[str, ...]


@dataclass(frozen=True)
class Connect:
    target: str
    token: str
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class Punch:
    source: str
    token: str
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class Birthday:
    token: str  # 32 hex digits: the probes' token
    mapping: str  # the sender's mapping behaviour (nat.report.MappingBehaviour value)
    address: str  # the sender's public ip:port (reflexive)


@dataclass(frozen=True)
class FeedHas:
    feed_id: str
    subfeed_hash: str


@dataclass(frozen=True)
class FeedSubscribe:
    feed_id: str
    subfeed_hash: str
    position: int


@dataclass(frozen=True)
class FeedUnsubscribe:
    feed_id: str
    subfeed_hash: str


@dataclass(frozen=True)
class FeedSubmit:
    feed_id: str
    subfeed_hash: str
    message: dict[str, Any]


Request = (
    Has | GetManifest | GetRange | ChannelsUpdate | Publish | Lookup | Connect | Punch
    | FeedHas | FeedSubscribe | FeedSubmit | FeedUnsubscribe | Birthday
)
MAX_CANDIDATES = 16
_CANDIDATE = re.compile(r"^[0-9a-fA-F.:\[\]]{3,60}:[0-9]{1,5}\Z")


def parse_candidates(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise _bad("candidates must be a list of at most 16 addresses")
    for item in value:
        if not isinstance(item, str) or not _CANDIDATE.match(item):
            raise _bad("bad candidate address")
    return tuple(value)


def parse_challenge(header: dict[str, Any]) -> Challenge:
    if header.get("op") != "challenge":
        raise _bad("expected a challenge")
    return Challenge(nonce=_hex(header.get("nonce"), _HEX32, "nonce"))


def parse_auth(header: dict[str, Any]) -> Auth:
    if header.get("op") != "auth":
        raise RemoteProtocolError("the first request must authenticate", code="unauthenticated")
    return Auth(
        node_id=_hex(header.get("nodeId"), _HEX64, "nodeId"),
        nonce=_hex(header.get("nonce"), _HEX32, "nonce"),
        signature=_hex(header.get("signature"), _HEX128, "signature"),
        label=_label(header.get("label", "")),
        channel_proofs=parse_proofs(header.get("channelProofs", [])),
    )


def parse_request(header: dict[str, Any]) -> Request:
    op = header.get("op")
    if op == "has":
        head = header.get("head", 0)
        return Has(sha1=_sha1(header.get("sha1")), head=min(_uint(head, "head"), HEAD_MAX))
    if op == "manifest":
        return GetManifest(sha1=_sha1(header.get("sha1")))
    if op == "get":
        start, end = _uint(header.get("start"), "start"), _uint(header.get("end"), "end")
        if end < start:
            raise _bad("end must not be before start")
        return GetRange(sha1=_sha1(header.get("sha1")), start=start, end=end)
    if op == "channels":
        return ChannelsUpdate(
            nonce=_hex(header.get("nonce"), _HEX32, "nonce"),
            channel_proofs=parse_proofs(header.get("channelProofs")),
        )
    if op == "publish":
        record = header.get("record")
        if not isinstance(record, dict):
            raise _bad("record must be an object")
        return Publish(record=record, frame_token=header.get("frameToken") is True)
    if op == "lookup":
        ids = header.get("rendezvousIds")
        if not isinstance(ids, list) or len(ids) > MAX_PROOFS:
            raise _bad("rendezvousIds must be a list")
        return Lookup(tuple(_hex(item, _HEX64, "rendezvous id") for item in ids))
    if op in ("connect", "punch"):
        node_id = _hex(header.get("target" if op == "connect" else "source"), _HEX64, "node id")
        token = _hex(header.get("token"), _HEX32, "token")
        candidates = parse_candidates(header.get("candidates", []))
        return Connect(node_id, token, candidates) if op == "connect" else Punch(node_id, token, candidates)
    if op == "birthday":
        mapping = header.get("mapping")
        if not isinstance(mapping, str) or len(mapping) > 40:
            raise _bad("mapping must be a short string")
        (address,) = parse_candidates([header.get("address")])
        return Birthday(_hex(header.get("token"), _HEX32, "token"), mapping, address)
    if op in ("feed-has", "feed-subscribe", "feed-submit", "feed-unsubscribe"):
        return _parse_feed_request(op, header)
    raise _bad(f"unknown op {str(op)[:40]!r}")


def _parse_feed_request(
    op: str, header: dict[str, Any]
) -> FeedHas | FeedSubscribe | FeedSubmit | FeedUnsubscribe:
    feed_id = _hex(header.get("feedId"), _HEX64, "feedId")
    subfeed_hash = _hex(header.get("subfeedHash"), _HEX40, "subfeedHash")
    if op == "feed-has":
        return FeedHas(feed_id, subfeed_hash)
    if op == "feed-unsubscribe":
        return FeedUnsubscribe(feed_id, subfeed_hash)
    if op == "feed-subscribe":
        return FeedSubscribe(feed_id, subfeed_hash, _uint(header.get("position"), "position"))
    message = header.get("message")
    if not isinstance(message, dict):
        raise _bad("message must be a JSON object")
    return FeedSubmit(feed_id, subfeed_hash, message)


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message[:500]}


def check_ok(header: dict[str, Any]) -> dict[str, Any]:
    """Raise RemoteProtocolError carrying the peer's code for an error response."""
    if header.get("ok") is True:
        return header
    code = header.get("code")
    message = header.get("message")
    raise RemoteProtocolError(
        str(message)[:500] if isinstance(message, str) else "peer refused the request",
        code=code if isinstance(code, str) and code in ERROR_CODES else "internal",
    )
