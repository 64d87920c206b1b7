"""How the client reaches the daemon: plain HTTP on loopback, or HTTPS with a pinned certificate when
``KACHERY_P2P_API_HOST`` names another address (a daemon started with ``--api-host``).

The pin is the SHA-256 of the daemon's certificate (DER), read from ``api-cert-sha256`` next to the
token in the daemon's config dir (a shared filesystem, as in the original). A daemon presenting any
other certificate is refused before the token is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl

from ..config import ClientConfig
from ..errors import DaemonAuthError

FINGERPRINT_FILENAME = "api-cert-sha256"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def make_connection(config: ClientConfig, timeout: float) -> http.client.HTTPConnection:
    if config.api_host in LOOPBACK:
        return http.client.HTTPConnection(config.api_host, config.api_port, timeout=timeout)
    path = config.config_dir / FINGERPRINT_FILENAME
    try:
        pinned = path.read_text(encoding="ascii").strip().lower()
    except OSError as exc:
        raise DaemonAuthError(
            f"cannot read the daemon's certificate fingerprint {path} ({exc.strerror}): KACHERY_P2P_API_HOST="
            f"{config.api_host} needs a daemon started with --api-host and its config dir"
        ) from None
    return PinnedHTTPSConnection(config.api_host, config.api_port, pinned, timeout=timeout)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS that trusts exactly one certificate, by its SHA-256 fingerprint (no CA, no host name)."""

    def __init__(self, host: str, port: int, fingerprint: str, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # replaced by the pin below
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(host, port, timeout=timeout, context=context)
        self._fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True) or b""
        got = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(got, self._fingerprint):
            self.close()
            raise DaemonAuthError(
                f"the daemon at {self.host}:{self.port} presented certificate {got[:16]}..., not the pinned "
                f"{self._fingerprint[:16]}...: refusing to send the token"
            )
