"""QUIC settings shared by every kachery-p2p connection, and the one read of aioquic's private state.

aioquic has no certificate-verification callback, so peers run with ``verify_mode=CERT_NONE`` and
check the peer certificate after ``HandshakeCompleted`` (``identity.check_peer_certificate``).
aioquic still checks the TLS CertificateVerify signature against the certificate's key, so the
certificate we read has been proven by the peer's private key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import ssl

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509

from ..errors import ConfigError
from . import bbr
from .identity import NodeIdentity

ALPN = "kachery-p2p/1"
CLIENT_SERVER_NAME = "kachery-p2p"
# Initial receive windows; flow.py slides and auto-tunes them up to 16 MiB / 8 MiB (the memory bound).
MAX_DATA = 4 * 1024 * 1024
MAX_STREAM_DATA = 2 * 1024 * 1024
# aioquic breaks on packets above this ("Unknown frame type"); see reference/nat-lab.md.
MAX_DATAGRAM_SIZE_LIMIT = 16383
# The model-based controller (quic/bbr.py) by default: on the WAN lab's 100 Mbit/s paths with 0.5-2 % random
# loss it keeps 4-5 MB/s where reno collapses to Mathis' limit (0.15-1.4 MB/s), and without loss it is
# within the noise of reno (python -m bench wan --quick --cc reno,bbr). reno and cubic stay selectable.
PREFERRED_CONGESTION_CONTROL = bbr.NAME
# KACHERY_P2P_CONGESTION_CONTROL=reno|cubic|bbr picks the controller of the connections a daemon opens
# and accepts (bbr = quic/bbr.py's model-based controller).
CONGESTION_CONTROL_ENV = "KACHERY_P2P_CONGESTION_CONTROL"
CONGESTION_CONTROL_NAMES = {"reno": "reno", "cubic": "cubic", "bbr": bbr.NAME}


def congestion_control_from_environ(environ: dict[str, str] | None = None) -> str:
    """The controller named by KACHERY_P2P_CONGESTION_CONTROL (reno, cubic, bbr), else the preferred one."""
    env = os.environ if environ is None else environ
    name = env.get(CONGESTION_CONTROL_ENV, "").strip().lower()
    if not name:
        return PREFERRED_CONGESTION_CONTROL
    if name not in CONGESTION_CONTROL_NAMES:
        choices = ", ".join(CONGESTION_CONTROL_NAMES)
        raise ConfigError(f"{CONGESTION_CONTROL_ENV}={name!r} is not a congestion controller (choose {choices})")
    return CONGESTION_CONTROL_NAMES[name]


@functools.lru_cache(maxsize=4)
def _congestion_control_algorithm(wanted: str = PREFERRED_CONGESTION_CONTROL) -> str | None:
    """``wanted`` if this aioquic has a congestion-control setting and knows it, else None."""
    if "congestion_control_algorithm" not in {f.name for f in dataclasses.fields(QuicConfiguration)}:
        return None
    try:
        import aioquic.quic.recovery  # noqa: F401  (registers the built-in algorithms)
        from aioquic.quic.congestion.base import create_congestion_control

        create_congestion_control(wanted, max_datagram_size=1200)
    except Exception:
        return None
    return wanted


def quic_configuration(
    identity: NodeIdentity,
    *,
    is_client: bool,
    max_datagram_size: int = 1350,
    idle_timeout: float = 30.0,
    congestion_control: str | None = None,
) -> QuicConfiguration:
    """A QuicConfiguration presenting ``identity``'s certificate, with kachery-p2p's ALPN and windows.

    Both sides carry the certificate and key (a client presents it if a server ever asks).
    Certificate checks are off in TLS: call ``identity.check_peer_certificate`` after the handshake.
    """
    if not 1200 <= max_datagram_size <= MAX_DATAGRAM_SIZE_LIMIT:
        raise ValueError(f"max_datagram_size must be within 1200..{MAX_DATAGRAM_SIZE_LIMIT}")
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        max_datagram_size=max_datagram_size,
        idle_timeout=idle_timeout,
        max_data=MAX_DATA,
        max_stream_data=MAX_STREAM_DATA,
        verify_mode=ssl.CERT_NONE,
        server_name=CLIENT_SERVER_NAME if is_client else None,
    )
    config.certificate = identity.certificate()
    config.private_key = identity.private_key
    algorithm = _congestion_control_algorithm(congestion_control or PREFERRED_CONGESTION_CONTROL)
    if algorithm is not None:
        config.congestion_control_algorithm = algorithm
    return config


def peer_certificate(conn: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer presented in the handshake, or None.

    This is the ONE place kachery-p2p reads aioquic's private state (``conn.tls._peer_certificate``):
    aioquic has no public accessor. pyproject.toml pins ``aioquic<2`` and
    tests/unit/test_quic_certificates.py runs a real handshake, so a change there fails a test
    instead of silently disabling the peer check (None is always treated as "no certificate").
    """
    tls = getattr(conn, "tls", None)
    cert = getattr(tls, "_peer_certificate", None)
    return cert if isinstance(cert, x509.Certificate) else None


def stream_send_buffered(conn: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged (private aioquic state, read here only)."""
    stream = conn._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def smoothed_rtt(conn: QuicConnection) -> float | None:
    """The smoothed RTT in seconds, or None before the first sample (private aioquic state)."""
    rtt = float(getattr(conn._loss, "_rtt_smoothed", 0.0))
    return rtt if rtt > 0 else None
