"""Every decoder that takes bytes from the network, with the only exceptions it may raise on bad input.

A decoder that raises anything else (or hangs) on some input is a crash: ``test_fuzz_decoders.py``
(hypothesis, bounded, in ``make test``) and ``run.py`` (``make fuzz``, a longer mutation loop with
counts per decoder) both use this table. Seeds are valid encodings the mutations start from.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from kachery_p2p.channels.announcements import decode_announcement, encode_announcement
from kachery_p2p.channels.membership import rendezvous_id
from kachery_p2p.channels.rendezvous import decode_record, encode_record
from kachery_p2p.errors import KacheryP2PError
from kachery_p2p.ids import FileUri
from kachery_p2p.nat import stun
from kachery_p2p.quic import messages
from kachery_p2p.quic.frames import FrameReader, encode_frame
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.relay.frames import (
    classify,
    decode_probe,
    decode_relay_frame,
    encode_from_relay,
    encode_probe,
    encode_to_relay,
)
from kachery_p2p.store import ManifestBuilder
from kachery_p2p.store.manifest import Manifest

NOW = 1_800_000_000.0
IDENTITY = NodeIdentity.from_private_bytes(bytes(range(32)))
NODE = IDENTITY.node_id
RV = rendezvous_id("fuzz-channel")
TID = bytes(range(12))


@dataclass(frozen=True)
class Target:
    name: str
    decode: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    seeds: tuple[bytes, ...]


def _stun(data: bytes) -> object:
    stun.header_transaction_id(data)
    stun.binding_answer(data, ("192.0.2.1", 1234))
    return stun.StunMessage.parse(data)


def _request(data: bytes) -> object:
    """A request stream as a peer sends it: one length-prefixed JSON header, then parsed."""
    parsed = FrameReader().feed(data)
    if parsed is None:
        return None
    header, _rest = parsed
    for parse in (messages.parse_request, messages.parse_auth, messages.parse_challenge):
        with contextlib.suppress(KacheryP2PError):
            parse(header)
    return messages.check_ok(header) if header.get("ok") is not None else header


def _record(data: bytes) -> object:
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    return decode_record(obj, NOW)


def _announcement(data: bytes) -> object:
    return decode_announcement(data, NOW)


def _manifest(data: bytes) -> object:
    return Manifest.parse(data)


def _datagram(data: bytes) -> object:
    """The shared socket's demux, then the decoder it picks."""
    kind = classify(data)
    if kind == "relay":
        return decode_relay_frame(data)
    if kind == "probe":
        return decode_probe(data)
    if kind == "stun":
        return _stun(data)
    return kind


def _uri(data: bytes) -> object:
    return FileUri.parse(data.decode("utf-8", "replace"))


def _manifest_seed() -> bytes:
    builder = ManifestBuilder()
    builder.update(bytes(20_000_000 + 5))  # two chunks
    _sha1, manifest = builder.finish()
    assert manifest is not None
    return manifest.to_json_bytes()


def _targets() -> list[Target]:
    record = json.dumps(encode_record(IDENTITY, "fuzz", [RV], ["192.0.2.1:4000", "[2001:db8::1]:5"], NOW)).encode()
    announcement = encode_announcement(IDENTITY, "fuzz", 4000, [RV], NOW)
    requests = (
        encode_frame({"op": "get", "sha1": "a" * 40, "start": 0, "end": 100}),
        encode_frame({"op": "has", "sha1": "a" * 40}),
        encode_frame({"op": "manifest", "sha1": "a" * 40}),
        encode_frame({"op": "lookup", "rendezvousIds": [RV]}),
        encode_frame({"op": "connect", "nodeId": NODE, "candidates": ["192.0.2.1:4000"]}),
        encode_frame({"ok": False, "code": "busy", "message": "x"}) + b"body",
    )
    stun_seeds = (
        stun.binding_request(TID),
        stun.binding_success(TID, ("192.0.2.1", 4000)),
        stun.binding_success(TID, ("2001:db8::1", 4000)),
        stun.binding_error(TID, 420, "Unknown"),
    )
    relay_seeds = (encode_to_relay(NODE, b"\x40" * 50), encode_from_relay(NODE, b"\xc0" * 1200))
    probe_seeds = (encode_probe(bytes(16), NODE, False), encode_probe(b"\x01" * 16, NODE, True))
    value_errors = (ValueError, KacheryP2PError)
    return [
        Target("stun", _stun, (ValueError,), stun_seeds),
        Target("relay_frame", decode_relay_frame, (ValueError,), relay_seeds),
        Target("punch_probe", decode_probe, (ValueError,), probe_seeds),
        Target("datagram_demux", _datagram, (ValueError,), stun_seeds + relay_seeds + probe_seeds),
        Target("request_header", _request, (KacheryP2PError,), requests),
        Target("rendezvous_record", _record, value_errors, (record,)),
        Target("lan_announcement", _announcement, value_errors, (announcement,)),
        Target("manifest", _manifest, value_errors, (_manifest_seed(),)),
        Target("file_uri", _uri, value_errors, (b"sha1://" + b"a" * 40 + b"/x.dat?manifest=" + b"b" * 40,)),
    ]


TARGETS = _targets()


def check(target: Target, data: bytes) -> BaseException | None:
    """None if the decoder accepted or refused ``data`` properly; the unexpected exception otherwise."""
    try:
        target.decode(data)
    except target.allowed:
        return None
    except RecursionError as exc:  # deep JSON nesting is refused by json itself; count it as a crash
        return exc
    except Exception as exc:
        return exc
    return None


def now() -> float:
    return time.perf_counter()
