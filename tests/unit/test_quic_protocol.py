"""The peer protocol without sockets: framing, messages, the in-band client proof, channel proofs, and
a real aioquic connection pair driven over an in-memory network that drops, duplicates and reorders.

The network is a small discrete-event simulation: every datagram gets a delivery time, the simulated
clock jumps to the next delivery or the next QUIC timer, and all randomness comes from one seeded
``random.Random``: nothing sleeps, and a failing seed gives the same drop pattern again.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from kachery_p2p.channels.membership import membership_proof, shared_channels
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic import messages
from kachery_p2p.quic.auth import (
    auth_payload,
    channel_binding,
    make_auth,
    my_channel_proofs,
    new_nonce,
    verify_auth,
)
from kachery_p2p.quic.flow import KacheryQuicConnection
from kachery_p2p.quic.frames import MAX_HEADER, FrameReader, encode_frame
from kachery_p2p.quic.identity import NodeIdentity, check_peer_certificate
from kachery_p2p.quic.settings import ALPN, peer_certificate, quic_configuration

SHA1 = "a" * 40
NONCE = "0" * 32
CLIENT_SEED = bytes(range(32))
SERVER_SEED = bytes(range(32, 64))
OTHER_SEED = bytes(range(64, 96))


@pytest.fixture(scope="module")
def client_id() -> NodeIdentity:
    return NodeIdentity.from_private_bytes(CLIENT_SEED)


@pytest.fixture(scope="module")
def server_id() -> NodeIdentity:
    return NodeIdentity.from_private_bytes(SERVER_SEED)


@pytest.fixture(scope="module")
def other_id() -> NodeIdentity:
    return NodeIdentity.from_private_bytes(OTHER_SEED)


def counter_random(start: int = 1) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom: each call returns fresh, distinct bytes."""
    state = [start]

    def rand(n: int) -> bytes:
        state[0] += 1
        return hashlib.sha256(state[0].to_bytes(8, "big")).digest()[:n]

    return rand


# ---- frames ----------------------------------------------------------------------------------


def frame_of(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_encode_frame_layout() -> None:
    data = encode_frame({"op": "has", "sha1": SHA1})
    body = json.dumps({"op": "has", "sha1": SHA1}, separators=(",", ":")).encode()
    assert data == struct.pack(">I", len(body)) + body


def test_encode_frame_refuses_oversize_header() -> None:
    with pytest.raises(ValueError):
        encode_frame({"x": "y" * MAX_HEADER})


@pytest.mark.parametrize("body", [b"", b"raw body \x00\xff" * 37])
def test_frame_reader_split_at_every_byte_boundary(body: bytes) -> None:
    header = {"op": "get", "sha1": SHA1, "start": 0, "end": 5, "label": "ünïcode"}
    data = encode_frame(header) + body
    for cut in range(len(data) + 1):
        reader = FrameReader()
        first = reader.feed(data[:cut])
        if first is None:
            second = reader.feed(data[cut:])
            assert second is not None, cut
            got, rest = second
        else:
            # The header was complete in the first part: the rest of the body follows separately.
            got, rest = first
            rest += data[cut:]
        assert got == header
        assert rest == body
        assert reader.done


def test_frame_reader_one_byte_at_a_time() -> None:
    header = {"op": "has", "sha1": SHA1}
    data = encode_frame(header)
    reader = FrameReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == (header, b"")


def test_frame_reader_header_and_body_in_one_feed() -> None:
    reader = FrameReader()
    assert reader.feed(encode_frame({"ok": True, "length": 3}) + b"abc") == ({"ok": True, "length": 3}, b"abc")
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


def test_frame_reader_oversize_header_fails_on_the_length_alone() -> None:
    reader = FrameReader()
    assert reader.feed(struct.pack(">I", MAX_HEADER + 1)[:3]) is None
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(struct.pack(">I", MAX_HEADER + 1)[3:])  # no body needed to refuse it
    assert info.value.code == "frame_too_large"
    with pytest.raises(RemoteProtocolError) as info:
        FrameReader().feed(b"\xff\xff\xff\xff")
    assert info.value.code == "frame_too_large"


def test_frame_reader_custom_limit() -> None:
    assert FrameReader(max_header=11).feed(frame_of(b'{"a":12345}')) == ({"a": 12345}, b"")
    with pytest.raises(RemoteProtocolError) as info:
        FrameReader(max_header=10).feed(frame_of(b'{"a":12345}'))
    assert info.value.code == "frame_too_large"
    ok = FrameReader(max_header=MAX_HEADER).feed(frame_of(json.dumps({"x": "y" * (MAX_HEADER - 10)}).encode()))
    assert ok is not None


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b'{"op": "has"', b"\xff\xfe\xfd", b"{'single': 'quotes'}", b"\x80abc"],
    ids=["empty", "text", "truncated", "binary", "python-dict", "bad-utf8"],
)
def test_frame_reader_refuses_non_json(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameReader().feed(frame_of(payload) + b"body")
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize("value", [[], [1, 2], "op", 3, 1.5, None, True])
def test_frame_reader_refuses_non_objects(value: Any) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameReader().feed(frame_of(json.dumps(value).encode()))
    assert info.value.code == "bad_frame"


# ---- messages --------------------------------------------------------------------------------


def test_parse_request_each_op() -> None:
    assert messages.parse_request({"op": "has", "sha1": SHA1}) == messages.Has(SHA1)
    assert messages.parse_request({"op": "manifest", "sha1": SHA1}) == messages.GetManifest(SHA1)
    assert messages.parse_request({"op": "get", "sha1": SHA1, "start": 3, "end": 9}) == messages.GetRange(SHA1, 3, 9)
    assert messages.parse_request({"op": "get", "sha1": SHA1, "start": 0, "end": 0}) == messages.GetRange(SHA1, 0, 0)
    proofs = ["b" * 64, "c" * 64]
    assert messages.parse_request({"op": "channels", "nonce": NONCE, "channelProofs": proofs}) == (
        messages.ChannelsUpdate(NONCE, tuple(proofs))
    )
    assert messages.parse_request({"op": "channels", "nonce": NONCE, "channelProofs": []}) == (
        messages.ChannelsUpdate(NONCE, ())
    )
    # Unknown extra fields are ignored (forward compatible).
    assert messages.parse_request({"op": "has", "sha1": SHA1, "future": 1}) == messages.Has(SHA1)


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"op": None},
        {"op": "HAS", "sha1": SHA1},
        {"op": "delete", "sha1": SHA1},
        {"op": ["has"], "sha1": SHA1},
        {"op": "auth"},
        {"op": "challenge", "nonce": NONCE},
        {"op": "has"},
        {"op": "has", "sha1": SHA1.upper()},
        {"op": "has", "sha1": SHA1[:-1]},
        {"op": "has", "sha1": SHA1 + "a"},
        {"op": "has", "sha1": "g" * 40},
        {"op": "has", "sha1": 12},
        {"op": "manifest"},
        {"op": "manifest", "sha1": "x"},
        {"op": "get", "sha1": SHA1, "start": 0},
        {"op": "get", "sha1": SHA1, "end": 4},
        {"op": "get", "sha1": SHA1, "start": -1, "end": 4},
        {"op": "get", "sha1": SHA1, "start": 0, "end": -4},
        {"op": "get", "sha1": SHA1, "start": 5, "end": 4},
        {"op": "get", "sha1": SHA1, "start": 0.0, "end": 4},
        {"op": "get", "sha1": SHA1, "start": "0", "end": 4},
        {"op": "get", "sha1": SHA1, "start": False, "end": True},
        {"op": "get", "sha1": "nope", "start": 0, "end": 4},
        {"op": "channels", "channelProofs": []},
        {"op": "channels", "nonce": NONCE},
        {"op": "channels", "nonce": "0" * 31, "channelProofs": []},
        {"op": "channels", "nonce": "Z" * 32, "channelProofs": []},
        {"op": "channels", "nonce": NONCE, "channelProofs": "b" * 64},
        {"op": "channels", "nonce": NONCE, "channelProofs": ["b" * 63]},
        {"op": "channels", "nonce": NONCE, "channelProofs": ["B" * 64]},
        {"op": "channels", "nonce": NONCE, "channelProofs": [None]},
        {"op": "channels", "nonce": NONCE, "channelProofs": ["b" * 64] * (messages.MAX_PROOFS + 1)},
    ],
)
def test_parse_request_refuses_malformed(header: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        messages.parse_request(header)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    "parse",
    [
        lambda: messages.parse_request({"op": "has", "sha1": SHA1 + "\n"}),
        lambda: messages.parse_request({"op": "get", "sha1": SHA1 + "\n", "start": 0, "end": 1}),
        lambda: messages.parse_request({"op": "channels", "nonce": NONCE + "\n", "channelProofs": []}),
        lambda: messages.parse_challenge({"op": "challenge", "nonce": NONCE + "\n"}),
        lambda: messages.parse_auth(_auth_header(nodeId="1" * 64 + "\n")),
    ],
    ids=["has", "get", "channels", "challenge", "auth"],
)
def test_hex_fields_refuse_a_trailing_newline(parse: Callable[[], object]) -> None:
    # re.match(r"^...$") would accept "hex\n": '$' also matches before a final newline.
    with pytest.raises(RemoteProtocolError) as info:
        parse()
    assert info.value.code == "bad_request"


def test_node_id_with_trailing_newline_is_not_a_second_identity(server_id: NodeIdentity) -> None:
    # A node that dials itself (its own LAN announcement, a bootstrap address of its own) can pass the
    # "cannot connect to itself" check by appending a newline to its id: bytes.fromhex ignores it, so
    # the signature verifies, and the session is registered under a node id that is not 64 hex digits.
    node_id = server_id.node_id + "\n"
    client_nonce = "1" * 32
    signature = server_id.sign(auth_payload(server_id.node_id, node_id, NONCE, client_nonce))
    header = {"op": "auth", "nodeId": node_id, "nonce": client_nonce, "signature": signature.hex()}
    with pytest.raises(RemoteProtocolError):
        verify_auth(messages.parse_auth(header), server_id.node_id, NONCE, [])


def test_parse_request_unknown_op_message_is_bounded() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        messages.parse_request({"op": "x" * 10_000})
    assert len(str(info.value)) < 100


def test_parse_proofs_limit() -> None:
    assert len(messages.parse_proofs(["b" * 64] * messages.MAX_PROOFS)) == messages.MAX_PROOFS


def test_parse_challenge() -> None:
    assert messages.parse_challenge({"op": "challenge", "nonce": NONCE}) == messages.Challenge(NONCE)
    for bad in ({"op": "challenge"}, {"op": "auth", "nonce": NONCE}, {"op": "challenge", "nonce": "0" * 64}):
        with pytest.raises(RemoteProtocolError) as info:
            messages.parse_challenge(bad)
        assert info.value.code == "bad_request"


def _auth_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {
        "op": "auth",
        "nodeId": "1" * 64,
        "nonce": NONCE,
        "signature": "2" * 128,
        "label": "lab",
        "channelProofs": ["3" * 64],
    }
    header.update(changes)
    return {k: v for k, v in header.items() if v is not None}


def test_parse_auth() -> None:
    auth = messages.parse_auth(_auth_header())
    assert auth == messages.Auth("1" * 64, NONCE, "2" * 128, "lab", ("3" * 64,))
    defaults = messages.parse_auth(_auth_header(label=None, channelProofs=None))
    assert defaults.label == "" and defaults.channel_proofs == ()
    assert messages.parse_auth(_auth_header(label="x" * 1000)).label == "x" * messages.MAX_LABEL


def test_parse_auth_first_request_must_authenticate() -> None:
    for header in ({"op": "has", "sha1": SHA1}, {}, _auth_header(op="AUTH")):
        with pytest.raises(RemoteProtocolError) as info:
            messages.parse_auth(header)
        assert info.value.code == "unauthenticated"


@pytest.mark.parametrize(
    "changes",
    [
        {"nodeId": None},
        {"nodeId": "1" * 63},
        {"nodeId": "G" * 64},
        {"nonce": None},
        {"nonce": "0" * 30},
        {"signature": None},
        {"signature": "2" * 127},
        {"signature": 5},
        {"label": 7},
        {"channelProofs": "3" * 64},
        {"channelProofs": ["3" * 65]},
    ],
)
def test_parse_auth_refuses_malformed(changes: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        messages.parse_auth(_auth_header(**changes))
    assert info.value.code == "bad_request"


def test_check_ok() -> None:
    ok = {"ok": True, "size": 3}
    assert messages.check_ok(ok) is ok
    for code in messages.ERROR_CODES:
        with pytest.raises(RemoteProtocolError) as info:
            messages.check_ok(messages.error(code, f"because {code}"))
        assert info.value.code == code and str(info.value) == f"because {code}"


@pytest.mark.parametrize(
    "header",
    [{}, {"ok": False}, {"ok": "true"}, {"ok": 1}, {"ok": False, "code": "made_up"}, {"ok": False, "code": 5}],
)
def test_check_ok_refuses_anything_but_ok_true(header: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        messages.check_ok(header)
    assert info.value.code in messages.ERROR_CODES
    if header.get("code") not in messages.ERROR_CODES:
        assert info.value.code == "internal"
    assert str(info.value) == "peer refused the request"


def test_error_messages_are_bounded() -> None:
    reply = messages.error("busy", "x" * 10_000)
    assert reply == {"ok": False, "code": "busy", "message": "x" * 500}
    with pytest.raises(RemoteProtocolError) as info:
        messages.check_ok({"ok": False, "code": "busy", "message": "y" * 10_000})
    assert len(str(info.value)) == 500


# ---- the in-band client proof ----------------------------------------------------------------


def _verify(auth: dict[str, Any], server: NodeIdentity, nonce: str, channels: list[str]) -> Any:
    # Through JSON, as on the wire.
    header = json.loads(json.dumps(auth))
    return verify_auth(messages.parse_auth(header), server.node_id, nonce, channels)


def test_auth_round_trip(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    server_nonce = new_nonce(counter_random())
    auth = make_auth(client_id, server_id.node_id, server_nonce, "the client", ["x", "y"], random=counter_random(7))
    assert auth["nodeId"] == client_id.node_id and auth["label"] == "the client"
    verified = _verify(auth, server_id, server_nonce, ["y", "z"])
    assert verified.node_id == client_id.node_id
    assert verified.label == "the client"
    assert verified.client_nonce == auth["nonce"]
    assert verified.shared_channels == ["y"]


def test_auth_is_bound_to_a_fresh_client_nonce(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    a = make_auth(client_id, server_id.node_id, NONCE, "", [])
    b = make_auth(client_id, server_id.node_id, NONCE, "", [])
    assert a["nonce"] != b["nonce"] and a["signature"] != b["signature"]
    payload = auth_payload(server_id.node_id, client_id.node_id, NONCE, str(a["nonce"]))
    assert payload.startswith(b"kachery-p2p/1 client-auth\x00")
    assert client_id.sign(payload).hex() == a["signature"]


def test_forged_signature_by_another_key_is_refused(
    client_id: NodeIdentity, server_id: NodeIdentity, other_id: NodeIdentity
) -> None:
    # The attacker claims to be client_id but can only sign with its own key.
    client_nonce = new_nonce()
    forged = make_auth(client_id, server_id.node_id, NONCE, "", [])
    forged["nonce"] = client_nonce
    forged["signature"] = other_id.sign(
        auth_payload(server_id.node_id, client_id.node_id, NONCE, client_nonce)
    ).hex()
    with pytest.raises(RemoteProtocolError) as info:
        _verify(forged, server_id, NONCE, [])
    assert info.value.code == "unauthenticated"


@pytest.mark.parametrize("field_name", ["nodeId", "nonce", "signature"])
def test_altered_proof_is_refused(
    field_name: str, client_id: NodeIdentity, server_id: NodeIdentity, other_id: NodeIdentity
) -> None:
    auth = make_auth(client_id, server_id.node_id, NONCE, "", ["x"])
    replacement = {
        "nodeId": other_id.node_id,
        "nonce": "f" * 32,
        "signature": ("0" if str(auth["signature"])[0] != "0" else "1") + str(auth["signature"])[1:],
    }
    auth[field_name] = replacement[field_name]
    with pytest.raises(RemoteProtocolError) as info:
        _verify(auth, server_id, NONCE, ["x"])
    assert info.value.code == "unauthenticated"


def test_replayed_proof_is_refused(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    rand = counter_random()
    n1, n2 = new_nonce(rand), new_nonce(rand)
    assert n1 != n2
    recorded = make_auth(client_id, server_id.node_id, n1, "", ["x"])
    assert _verify(recorded, server_id, n1, ["x"]).node_id == client_id.node_id
    # The same bytes presented on another connection, where the server chose nonce N2.
    with pytest.raises(RemoteProtocolError) as info:
        _verify(recorded, server_id, n2, ["x"])
    assert info.value.code == "unauthenticated"


def test_proof_for_another_server_is_refused(
    client_id: NodeIdentity, server_id: NodeIdentity, other_id: NodeIdentity
) -> None:
    # other_id (a malicious server) relays the client's proof to server_id, even with the same nonce.
    proof_for_other = make_auth(client_id, other_id.node_id, NONCE, "", [])
    with pytest.raises(RemoteProtocolError) as info:
        _verify(proof_for_other, server_id, NONCE, [])
    assert info.value.code == "unauthenticated"


def test_client_claiming_the_servers_id_is_refused(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    # Without the server's key: the signature does not verify.
    auth = make_auth(client_id, server_id.node_id, NONCE, "", [])
    auth["nodeId"] = server_id.node_id
    with pytest.raises(RemoteProtocolError) as info:
        _verify(auth, server_id, NONCE, [])
    assert info.value.code == "unauthenticated"
    # With it (a node that dialed itself): still refused.
    self_auth = make_auth(server_id, server_id.node_id, NONCE, "", [])
    with pytest.raises(RemoteProtocolError) as info:
        _verify(self_auth, server_id, NONCE, [])
    assert info.value.code == "unauthenticated"
    assert "itself" in str(info.value)


# ---- channel proofs --------------------------------------------------------------------------


def test_shared_channels_only_for_channels_both_know(client_id: NodeIdentity) -> None:
    binding = channel_binding(NONCE, "1" * 32)
    proofs = my_channel_proofs(client_id, ["alpha", "beta", "gamma"], binding)
    assert len(set(proofs)) == 3
    assert shared_channels(["beta", "delta", "alpha"], proofs, binding, client_id.node_id) == ["beta", "alpha"]
    assert shared_channels(["delta"], proofs, binding, client_id.node_id) == []
    assert shared_channels([], proofs, binding, client_id.node_id) == []
    assert shared_channels(["alpha"], [], binding, client_id.node_id) == []
    # Names are exact: no case folding, no prefix match.
    assert shared_channels(["Alpha", "alph", "alpha "], proofs, binding, client_id.node_id) == []


def test_channel_proofs_do_not_transfer_between_bindings(client_id: NodeIdentity) -> None:
    b1 = channel_binding("1" * 32, "2" * 32)
    b2 = channel_binding("3" * 32, "2" * 32)
    b3 = channel_binding("1" * 32, "4" * 32)
    b_update = channel_binding("1" * 32, "2" * 32, "5" * 32)
    proofs = my_channel_proofs(client_id, ["alpha"], b1)
    assert shared_channels(["alpha"], proofs, b1, client_id.node_id) == ["alpha"]
    for other in (b2, b3, b_update):
        assert shared_channels(["alpha"], proofs, other, client_id.node_id) == []


def test_channel_proofs_are_bound_to_the_prover(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    # A server that does not know the channel cannot echo the client's proofs back as its own.
    binding = channel_binding("1" * 32, "2" * 32)
    client_proofs = my_channel_proofs(client_id, ["secret"], binding)
    assert shared_channels(["secret"], client_proofs, binding, server_id.node_id) == []
    assert membership_proof("secret", binding, client_id.node_id) == client_proofs[0]


def test_auth_carries_channel_proofs_bound_to_both_nonces(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    auth = make_auth(client_id, server_id.node_id, NONCE, "", ["alpha", "beta"])
    binding = channel_binding(NONCE, str(auth["nonce"]))
    assert auth["channelProofs"] == my_channel_proofs(client_id, ["alpha", "beta"], binding)
    # Recorded proofs replayed with another server nonce prove nothing (and the signature fails too).
    replay_binding = channel_binding("9" * 32, str(auth["nonce"]))
    proofs = cast(list[str], auth["channelProofs"])
    assert shared_channels(["alpha"], proofs, binding, client_id.node_id) == ["alpha"]
    assert shared_channels(["alpha"], proofs, replay_binding, client_id.node_id) == []


# ---- a real QUIC connection over a lossy in-memory network -----------------------------------

CLIENT_ADDR = ("10.0.0.1", 4001)
SERVER_ADDR = ("10.0.0.2", 4002)
ONE_WAY_DELAY = 0.005
CLOCK_TICK = 1e-6


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability of an extra random delay of up to 4 one-way delays


@dataclass
class Side:
    conn: QuicConnection
    addr: tuple[str, int]
    active: bool = False  # an aioquic server must not be polled before its first datagram
    handshake_done: bool = False
    alpn: str | None = None
    terminated: events.ConnectionTerminated | None = None
    streams: dict[int, bytearray] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)

    def drain_events(self) -> None:
        event = self.conn.next_event()
        while event is not None:
            if isinstance(event, events.HandshakeCompleted):
                self.handshake_done = True
                self.alpn = event.alpn_protocol
            elif isinstance(event, events.StreamDataReceived):
                if event.stream_id not in self.streams:
                    self.streams[event.stream_id] = bytearray()
                    self.order.append(event.stream_id)
                self.streams[event.stream_id] += event.data
                if event.end_stream:
                    self.ended.add(event.stream_id)
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = event
            event = self.conn.next_event()


class LossyNetwork:
    """Two QuicConnections joined by a simulated link; time is simulated and never slept."""

    def __init__(self, client: QuicConnection, server: QuicConnection, seed: int, impairment: Impairment) -> None:
        self.client = Side(client, CLIENT_ADDR)
        self.server = Side(server, SERVER_ADDR)
        self.rng = random.Random(seed)
        self.impairment = impairment
        self.now = 0.0
        self._queue: list[tuple[float, int, int, bytes]] = []  # (deliver_at, seq, to_server, data)
        self._seq = 0
        self.stats = {"sent": 0, "dropped": 0, "duplicated": 0, "delayed": 0, "delivered": 0}

    def _emit(self, src: Side) -> None:
        if not src.active:
            return
        to_server = 1 if src is self.client else 0
        for data, _addr in src.conn.datagrams_to_send(now=self.now):
            self.stats["sent"] += 1
            if self.rng.random() < self.impairment.loss:
                self.stats["dropped"] += 1
                continue
            copies = 1
            if self.rng.random() < self.impairment.duplicate:
                copies = 2
                self.stats["duplicated"] += 1
            for _ in range(copies):
                delay = ONE_WAY_DELAY
                if self.rng.random() < self.impairment.reorder:
                    delay += self.rng.uniform(0, 4 * ONE_WAY_DELAY)
                    self.stats["delayed"] += 1
                self._seq += 1
                heapq.heappush(self._queue, (self.now + delay, self._seq, to_server, data))

    def _step(self) -> bool:
        """Send what is ready, then advance to the next delivery or timer; False when nothing is left."""
        for side in (self.client, self.server):
            self._emit(side)
            side.drain_events()
        candidates = [t for t in (self.client.conn.get_timer(), self.server.conn.get_timer()) if t is not None]
        if self._queue:
            candidates.append(self._queue[0][0])
        if not candidates:
            return False
        # A hair past the due time, as a real clock would be: aioquic's time-threshold loss detection
        # compares ``now - loss_delay`` with the send time, and at exactly the due time rounding can
        # leave the same packet due again forever.
        self.now = max(self.now, min(candidates) + CLOCK_TICK)
        while self._queue and self._queue[0][0] <= self.now:
            _at, _seq, to_server, data = heapq.heappop(self._queue)
            src, dst = (self.client, self.server) if to_server else (self.server, self.client)
            dst.conn.receive_datagram(data, src.addr, now=self.now)
            dst.active = True
            self.stats["delivered"] += 1
        for side in (self.client, self.server):
            timer = side.conn.get_timer()
            if timer is not None and timer <= self.now:
                side.conn.handle_timer(now=self.now)
            side.drain_events()
        return True

    def run_until(self, condition: Callable[[], bool], max_sim_seconds: float = 60.0) -> None:
        deadline = self.now + max_sim_seconds
        for side in (self.client, self.server):
            side.drain_events()
        while not condition():
            assert self.client.terminated is None, f"client closed: {self.client.terminated}"
            assert self.server.terminated is None, f"server closed: {self.server.terminated}"
            assert self._step(), "the network went quiet before the condition held"
            assert self.now <= deadline, f"condition not met after {max_sim_seconds} simulated seconds"

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def complete(self, side: Side, stream_id: int) -> bool:
        return stream_id in side.ended


def make_network(
    client_identity: NodeIdentity, server_identity: NodeIdentity, seed: int, impairment: Impairment
) -> LossyNetwork:
    client = KacheryQuicConnection(configuration=quic_configuration(client_identity, is_client=True))
    server = KacheryQuicConnection(
        configuration=quic_configuration(server_identity, is_client=False),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    net = LossyNetwork(client, server, seed, impairment)
    client.connect(SERVER_ADDR, now=net.now)
    net.client.active = True
    return net


def read_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    parsed = FrameReader().feed(data)
    assert parsed is not None, "incomplete frame"
    return parsed


def random_body(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


IMPAIRMENTS = {
    "clean": Impairment(),
    "loss5": Impairment(loss=0.05, duplicate=0.05, reorder=0.2),
    "loss20": Impairment(loss=0.20, duplicate=0.10, reorder=0.3),
}
CASES = [(name, seed) for name in IMPAIRMENTS for seed in (1, 2, 3)]


@pytest.mark.parametrize(("impairment_name", "seed"), CASES, ids=[f"{n}-seed{s}" for n, s in CASES])
def test_authenticated_transfer_over_lossy_link(
    impairment_name: str, seed: int, client_id: NodeIdentity, server_id: NodeIdentity
) -> None:
    impairment = IMPAIRMENTS[impairment_name]
    net = make_network(client_id, server_id, seed, impairment)
    server, client = net.server, net.client
    server_channels, client_channels = ["lab", "shared"], ["shared", "mine"]

    # 1. Handshake; the dialer checks it reached the node it meant.
    net.run_until(lambda: client.handshake_done and server.handshake_done)
    assert check_peer_certificate(peer_certificate(client.conn), server_id.node_id) == server_id.node_id
    assert peer_certificate(server.conn) is None  # the server must rely on the in-band proof

    # 2. The server's challenge on its first unidirectional stream.
    server_nonce = new_nonce(random.Random(seed).randbytes)
    challenge_stream = server.conn.get_next_available_stream_id(is_unidirectional=True)
    assert challenge_stream == 3
    server.conn.send_stream_data(challenge_stream, encode_frame({"op": "challenge", "nonce": server_nonce}), True)
    net.run_until(lambda: net.complete(client, challenge_stream))
    challenge = messages.parse_challenge(read_frame(bytes(client.streams[challenge_stream]))[0])
    assert challenge.nonce == server_nonce

    # 3. The client's proof on its first bidirectional stream; the server verifies and answers.
    auth = make_auth(client_id, server_id.node_id, challenge.nonce, "client", client_channels)
    auth_stream = client.conn.get_next_available_stream_id()
    assert auth_stream == 0
    client.conn.send_stream_data(auth_stream, encode_frame(auth), end_stream=True)
    net.run_until(lambda: net.complete(server, auth_stream))
    header, rest = read_frame(bytes(server.streams[auth_stream]))
    assert rest == b""
    verified = verify_auth(messages.parse_auth(header), server_id.node_id, server_nonce, server_channels)
    assert verified.node_id == client_id.node_id and verified.shared_channels == ["shared"]
    binding = channel_binding(server_nonce, verified.client_nonce)
    reply = {"ok": True, "label": "server", "channelProofs": my_channel_proofs(server_id, server_channels, binding)}
    server.conn.send_stream_data(auth_stream, encode_frame(reply), end_stream=True)
    net.run_until(lambda: net.complete(client, auth_stream))
    answer = messages.check_ok(read_frame(bytes(client.streams[auth_stream]))[0])
    proofs = list(messages.parse_proofs(answer["channelProofs"]))
    assert shared_channels(client_channels, proofs, binding, server_id.node_id) == ["shared"]

    # 4. A 2 MiB body on a request stream arrives intact.
    body = random_body(seed, 2 * 1024 * 1024)
    sha1 = hashlib.sha1(body).hexdigest()
    get_stream = client.conn.get_next_available_stream_id()
    request = {"op": "get", "sha1": sha1, "start": 0, "end": len(body)}
    client.conn.send_stream_data(get_stream, encode_frame(request), end_stream=True)
    net.run_until(lambda: net.complete(server, get_stream))
    parsed = messages.parse_request(read_frame(bytes(server.streams[get_stream]))[0])
    assert parsed == messages.GetRange(sha1, 0, len(body))
    server.conn.send_stream_data(get_stream, encode_frame({"ok": True, "length": len(body)}) + body, end_stream=True)
    net.run_until(lambda: net.complete(client, get_stream), max_sim_seconds=300.0)
    response, received = read_frame(bytes(client.streams[get_stream]))
    assert messages.check_ok(response)["length"] == len(received) == len(body)
    assert hashlib.sha1(received).hexdigest() == sha1

    # The impairments really happened (or, for the clean link, did not).
    if impairment.loss:
        assert net.stats["dropped"] > 0 and net.stats["duplicated"] > 0 and net.stats["delayed"] > 0
    else:
        assert net.stats["dropped"] == 0 and net.stats["delivered"] + net.in_flight == net.stats["sent"]


def test_parallel_streams_over_lossy_link(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    """Several request streams at once (as a download runs them), each body intact and on its stream."""
    net = make_network(client_id, server_id, 11, IMPAIRMENTS["loss5"])
    net.run_until(lambda: net.client.handshake_done and net.server.handshake_done)
    bodies: dict[int, bytes] = {}
    for index in range(6):
        stream_id = net.client.conn.get_next_available_stream_id()
        net.client.conn.send_stream_data(stream_id, encode_frame({"op": "get", "sha1": SHA1, "start": index,
                                                                   "end": index + 1}), end_stream=True)
        bodies[stream_id] = random_body(100 + index, 150_000 + index)
    net.run_until(lambda: all(net.complete(net.server, s) for s in bodies))
    for stream_id, body in bodies.items():
        request = messages.parse_request(read_frame(bytes(net.server.streams[stream_id]))[0])
        assert isinstance(request, messages.GetRange)
        net.server.conn.send_stream_data(stream_id, encode_frame({"ok": True, "length": len(body)}) + body, True)
    net.run_until(lambda: all(net.complete(net.client, s) for s in bodies))
    for stream_id, body in bodies.items():
        _header, received = read_frame(bytes(net.client.streams[stream_id]))
        assert received == body


def test_alpn_is_the_protocol_version(client_id: NodeIdentity, server_id: NodeIdentity) -> None:
    assert ALPN == "kachery-p2p/1"
    net = make_network(client_id, server_id, 5, Impairment())
    net.run_until(lambda: net.client.handshake_done and net.server.handshake_done)
    assert net.client.alpn == net.server.alpn == ALPN
