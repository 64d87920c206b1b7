"""The certificate profile (byte-exact vectors in certs/vectors/) and real in-memory aioquic handshakes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic.identity import (
    NodeIdentity,
    check_peer_certificate,
    make_certificate,
    node_id_from_certificate,
)
from kachery_p2p.quic.settings import ALPN, MAX_DATA, MAX_STREAM_DATA, peer_certificate, quic_configuration

VECTORS = Path(__file__).resolve().parents[2] / "certs" / "vectors"
CLIENT_ADDR = ("10.0.0.1", 4001)
SERVER_ADDR = ("10.0.0.2", 4002)


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_text())
    return data


def _load_cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((VECTORS / name).read_bytes())


# ---- vectors ---------------------------------------------------------------------------------


def test_vector_key_gives_node_id(vectors: dict[str, Any]) -> None:
    identity = NodeIdentity.from_pem((VECTORS / "node-key.pem").read_bytes())
    assert identity.node_id == vectors["node_id"]
    assert NodeIdentity.from_private_bytes(bytes.fromhex(vectors["seed_hex"])).node_id == vectors["node_id"]


def test_make_certificate_is_byte_exact(vectors: dict[str, Any]) -> None:
    identity = NodeIdentity.from_pem((VECTORS / "node-key.pem").read_bytes())
    der = make_certificate(identity.private_key).public_bytes(serialization.Encoding.DER)
    assert der == (VECTORS / "node-cert.der").read_bytes()
    assert identity.certificate_der() == der
    assert _load_cert("node-cert.pem").public_bytes(serialization.Encoding.DER) == der
    assert hashlib.sha256(der).hexdigest() == vectors["certificate_sha256"]


def test_vector_certificate_profile(vectors: dict[str, Any]) -> None:
    cert = _load_cert("node-cert.pem")
    node_id = vectors["node_id"]
    assert cert.version == x509.Version.v3
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == f"CN={node_id},O=kachery-p2p"
    assert cert.serial_number == vectors["serial_number"]
    assert 0 < cert.serial_number < 2**127
    assert cert.not_valid_before_utc.year == 2020
    assert cert.not_valid_after_utc.year == 9999
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [
        f"{node_id[:32]}.{node_id[32:]}.kachery-p2p.invalid"
    ]


def test_vector_certificate_is_accepted(vectors: dict[str, Any]) -> None:
    assert node_id_from_certificate(_load_cert("node-cert.pem")) == vectors["node_id"]
    assert check_peer_certificate(_load_cert("node-cert.pem"), vectors["node_id"]) == vectors["node_id"]
    assert (
        check_peer_certificate(_load_cert("node-cert.pem"), vectors["node_id"].upper()) == vectors["node_id"]
    )
    assert check_peer_certificate(_load_cert("node-cert.pem"), None) == vectors["node_id"]


def test_bad_vectors_are_rejected(vectors: dict[str, Any]) -> None:
    assert len(vectors["rejected"]) == 2
    messages = []
    for entry in vectors["rejected"]:
        cert = _load_cert(entry["file"])
        with pytest.raises(RemoteProtocolError) as info:
            node_id_from_certificate(cert)
        assert info.value.code == entry["code"] == "bad_certificate"
        with pytest.raises(RemoteProtocolError):
            check_peer_certificate(cert, None)
        messages.append(str(info.value))
    assert "ECDSA secp256r1" in messages[0] and "not Ed25519" in messages[0]
    assert "not signed by its own key" in messages[1]


def test_wrong_expected_node_id(vectors: dict[str, Any]) -> None:
    other = NodeIdentity.from_private_bytes(bytes(32)).node_id
    with pytest.raises(RemoteProtocolError) as info:
        check_peer_certificate(_load_cert("node-cert.pem"), other)
    assert info.value.code == "wrong_node_id"
    assert vectors["node_id"][:12] in str(info.value) and other[:12] in str(info.value)


def test_missing_certificate() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check_peer_certificate(None, None)
    assert info.value.code == "bad_certificate"


def test_certificate_is_cached_and_matches_key() -> None:
    identity = NodeIdentity.generate()
    assert identity.certificate() is identity.certificate()
    assert node_id_from_certificate(identity.certificate()) == identity.node_id


# ---- configuration ---------------------------------------------------------------------------


def test_quic_configuration_settings() -> None:
    identity = NodeIdentity.generate()
    client = quic_configuration(identity, is_client=True)
    server = quic_configuration(identity, is_client=False, max_datagram_size=1452, idle_timeout=10.0)
    for config in (client, server):
        assert config.alpn_protocols == [ALPN] == ["kachery-p2p/1"]
        assert config.certificate is identity.certificate()
        assert config.private_key is identity.private_key
        assert config.max_data == MAX_DATA == 4 * 1024 * 1024  # initial windows: quic/flow.py grows them
        assert config.max_stream_data == MAX_STREAM_DATA == 2 * 1024 * 1024
        assert config.congestion_control_algorithm == "kachery-bbr"  # quic/bbr.py, registered with aioquic
    assert client.is_client and client.server_name == "kachery-p2p" and client.max_datagram_size == 1350
    assert not server.is_client and server.server_name is None
    assert server.max_datagram_size == 1452 and server.idle_timeout == 10.0
    with pytest.raises(ValueError):
        quic_configuration(identity, is_client=True, max_datagram_size=20000)


# ---- real handshakes, datagrams shuttled in memory -------------------------------------------


@dataclass
class Pair:
    client: QuicConnection
    server: QuicConnection
    now: float = 0.0
    client_events: list[events.QuicEvent] = field(default_factory=list)
    server_events: list[events.QuicEvent] = field(default_factory=list)

    def _drain(self) -> None:
        for conn, sink in ((self.client, self.client_events), (self.server, self.server_events)):
            event = conn.next_event()
            while event is not None:
                sink.append(event)
                event = conn.next_event()

    def _shuttle(self) -> int:
        moved = 0
        for src, dst, src_addr in (
            (self.client, self.server, CLIENT_ADDR),
            (self.server, self.client, SERVER_ADDR),
        ):
            for data, _addr in src.datagrams_to_send(now=self.now):
                dst.receive_datagram(data, src_addr, now=self.now)
                moved += 1
        return moved

    def run_until(self, done: Callable[[Pair], bool], max_seconds: float = 120.0) -> None:
        """Move datagrams until quiet, then jump the simulated clock to the next timer; repeat."""
        deadline = self.now + max_seconds
        while True:
            while self._shuttle():
                pass
            self._drain()
            if done(self):
                return
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            assert timers and min(timers) <= deadline, "the connections went quiet before the condition held"
            self.now = max(self.now, min(timers))
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(now=self.now)


def _pair(client_config: QuicConfiguration, server_config: QuicConfiguration) -> Pair:
    client = QuicConnection(configuration=client_config)
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    pair = Pair(client, server)
    client.connect(SERVER_ADDR, now=pair.now)
    return pair


def _handshake_done(pair: Pair) -> bool:
    return any(isinstance(e, events.HandshakeCompleted) for e in pair.client_events) and any(
        isinstance(e, events.HandshakeCompleted) for e in pair.server_events
    )


def test_handshake_proves_server_node_id() -> None:
    client_id, server_id = NodeIdentity.generate(), NodeIdentity.generate()
    pair = _pair(
        quic_configuration(client_id, is_client=True), quic_configuration(server_id, is_client=False)
    )
    assert peer_certificate(pair.client) is None  # nothing received yet
    pair.run_until(_handshake_done)
    completed = [e for e in pair.client_events if isinstance(e, events.HandshakeCompleted)]
    assert completed[0].alpn_protocol == ALPN
    cert = peer_certificate(pair.client)
    assert cert is not None
    assert cert.public_bytes(serialization.Encoding.DER) == server_id.certificate_der()
    assert check_peer_certificate(cert, server_id.node_id) == server_id.node_id
    # aioquic's server never requests a client certificate: the client proves its key in-band.
    assert peer_certificate(pair.server) is None


def test_handshake_with_unexpected_server_is_refused_by_dialer() -> None:
    client_id, expected, actual = NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate()
    pair = _pair(quic_configuration(client_id, is_client=True), quic_configuration(actual, is_client=False))
    pair.run_until(_handshake_done)
    with pytest.raises(RemoteProtocolError) as info:
        check_peer_certificate(peer_certificate(pair.client), expected.node_id)
    assert info.value.code == "wrong_node_id"
    assert actual.node_id[:12] in str(info.value) and expected.node_id[:12] in str(info.value)

    # The dialer then closes; the server sees why.
    pair.client.close(error_code=0x100, reason_phrase=str(info.value))
    pair.run_until(lambda p: any(isinstance(e, events.ConnectionTerminated) for e in p.server_events))
    terminated = next(e for e in pair.server_events if isinstance(e, events.ConnectionTerminated))
    assert terminated.error_code == 0x100 and "we dialed" in terminated.reason_phrase


def test_alpn_mismatch_gives_client_a_clear_error() -> None:
    client_config = quic_configuration(NodeIdentity.generate(), is_client=True)
    client_config.alpn_protocols = ["kachery-p2p/2"]
    pair = _pair(client_config, quic_configuration(NodeIdentity.generate(), is_client=False))
    pair.run_until(lambda p: any(isinstance(e, events.ConnectionTerminated) for e in p.client_events))
    assert not any(isinstance(e, events.HandshakeCompleted) for e in pair.client_events + pair.server_events)
    terminated = next(e for e in pair.client_events if isinstance(e, events.ConnectionTerminated))
    # CRYPTO_ERROR (0x100) + TLS alert no_application_protocol (120) = 0x178, raised in the CRYPTO frame.
    assert terminated.error_code == 0x100 + 120 == 376
    assert terminated.frame_type == 0x06
    assert terminated.reason_phrase == "No common ALPN protocols"
    # aioquic reports it only after the draining period (3 PTO), so a dialer must keep driving timers.
    assert pair.now > 0


def test_server_cannot_present_a_certificate_whose_key_it_lacks() -> None:
    # The premise of verify_mode=CERT_NONE: aioquic still checks CertificateVerify against the key.
    victim, impostor = NodeIdentity.generate(), NodeIdentity.generate()
    server_config = quic_configuration(impostor, is_client=False)
    server_config.certificate = victim.certificate()  # victim's certificate, impostor's key
    pair = _pair(quic_configuration(NodeIdentity.generate(), is_client=True), server_config)
    pair.run_until(lambda p: any(isinstance(e, events.ConnectionTerminated) for e in p.client_events))
    assert not any(isinstance(e, events.HandshakeCompleted) for e in pair.client_events)
    terminated = next(e for e in pair.client_events if isinstance(e, events.ConnectionTerminated))
    assert terminated.error_code == 0x100 + 51  # CRYPTO_ERROR + TLS alert decrypt_error
