"""How the client reaches the daemon: plain HTTP on loopback, or HTTPS with a pinned certificate when
``KACHERY_P2P_API_HOST`` names another address (a daemon started with ``--api-host``).

The pin is the SHA-256 of the daemon's certificate (DER), read from ``api-cert-sha256`` next to the
token in the daemon's config dir (a shared filesystem, as in the original). A daemon presenting any
other certificate is refused before the token is sent. ``socket``, ``ssl`` and ``hashlib`` are
imported only for a remote daemon: a local command does not pay for them (it uses the C module
``_socket`` directly; ``socket.py`` builds four enum classes at import, ~4 ms of every command).
"""

from __future__ import annotations

import _socket
from typing import TYPE_CHECKING

from ..client_config import ClientConfig
from ..errors import DaemonAuthError

if TYPE_CHECKING:
    import socket

FINGERPRINT_FILENAME = "api-cert-sha256"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def open_socket(config: ClientConfig, timeout: float) -> _socket.socket | socket.socket:
    """A connected socket to the daemon's control endpoint (TLS, pinned, for a remote one).

    Raises what connect raises: ConnectionRefusedError, socket.gaierror (the same class as
    ``_socket.gaierror``), TimeoutError, OSError.
    """
    host = config.api_host.strip("[]")
    if config.api_host in LOOPBACK:
        return _connect(host, config.api_port, timeout)
    path = config.config_dir / FINGERPRINT_FILENAME
    try:
        pinned = path.read_text(encoding="ascii").strip().lower()
    except OSError as exc:
        raise DaemonAuthError(
            f"cannot read the daemon's certificate fingerprint {path} ({exc.strerror}): KACHERY_P2P_API_HOST="
            f"{config.api_host} needs a daemon started with --api-host and its config dir"
        ) from None
    import socket

    return _pinned_tls(socket.create_connection((host, config.api_port), timeout=timeout), config, pinned)


def _connect(host: str, port: int, timeout: float) -> _socket.socket:
    """``socket.create_connection`` for the loopback endpoint: each address in turn, the last error raised."""
    error: OSError | None = None
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"no address for {host}")


def _pinned_tls(raw: socket.socket, config: ClientConfig, fingerprint: str) -> socket.socket:
    """TLS over ``raw`` that trusts exactly one certificate, by its SHA-256 fingerprint (no CA, no host name)."""
    import hashlib
    import hmac
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # replaced by the pin below
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        sock = context.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise
    der = sock.getpeercert(binary_form=True) or b""
    got = hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(got, fingerprint):
        sock.close()
        raise DaemonAuthError(
            f"the daemon at {config.api_host}:{config.api_port} presented certificate {got[:16]}..., not the "
            f"pinned {fingerprint[:16]}...: refusing to send the token"
        )
    return sock
