"""Sharing one daemon with a lab: ``--auth-group`` and ``--api-host`` (both opt-in).

* ``--auth-group GROUP``: the token file becomes 0640 with that group, and the config dir 0710 with
  that group (members may reach the token, not list or read anything else). Nothing else changes.
* ``--api-host ADDR``: besides loopback HTTP, the control endpoint is served over HTTPS on
  ``ADDR:<api port>`` with a self-signed certificate (kept in the config dir); the SHA-256 of its
  DER is written next to the token (``api-cert-sha256``), and clients pin it.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import hashlib
import ipaddress
import logging
import os
import ssl
import stat
from pathlib import Path

from aiohttp import web

from ..config import DaemonConfig
from ..errors import ConfigError, PortInUseError
from .control_guard import GuardedSite
from .lock import write_secret_file

log = logging.getLogger("kachery_p2p.control")

FINGERPRINT_FILENAME = "api-cert-sha256"
CERT_FILENAME = "api-cert.pem"
KEY_FILENAME = "api-key.pem"


def group_id(group: str) -> int:
    """The gid of a group name (or a number); ConfigError if there is none."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"--auth-group: no group named {group!r}") from None


def check_api_host(host: str) -> str:
    """--api-host takes one specific address (not a wildcard, not 127.0.0.1 where plain HTTP stays)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"--api-host needs an IP address of this machine, not {host!r}") from None
    if address.is_unspecified or str(address) == "127.0.0.1":
        raise ConfigError(
            f"--api-host needs one specific address of this machine (127.0.0.1 is served already), not {host!r}"
        )
    return str(address)


async def start_sites(runner: web.AppRunner, config: DaemonConfig) -> str | None:
    """Listen on loopback (HTTP) and, with --api-host, on ADDR (HTTPS); the certificate fingerprint."""
    sites: list[tuple[str, ssl.SSLContext | None]] = [(config.api_host, None)]
    fingerprint = None
    if config.api_public_host:
        context, fingerprint = _tls_context(config.config_dir, config.api_public_host)
        sites.append((config.api_public_host, context))
        log.warning(
            "the control endpoint is also served on https://%s:%d: anyone who can read %s controls this daemon",
            config.api_public_host, config.api_port, config.token_path,
        )
    for host, tls in sites:
        site = GuardedSite(runner, host, config.api_port, reuse_address=True, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
            raise PortInUseError(  # start-daemon adds which option chooses another port
                f"cannot listen on {host}:{config.api_port} for the control endpoint ({reason}):"
                " is another daemon or program using it?", "control"
            ) from None
    return fingerprint


def publish(config: DaemonConfig, token: str, fingerprint: str | None) -> None:
    """Write the token (and the certificate fingerprint), readable by the auth group if there is one."""
    write_secret_file(config.token_path, token)
    fingerprint_path = config.config_dir / FINGERPRINT_FILENAME
    if fingerprint is None:
        with contextlib.suppress(FileNotFoundError):
            fingerprint_path.unlink()
    else:
        write_secret_file(fingerprint_path, fingerprint + "\n")
    if config.auth_group is None:
        return
    gid = group_id(config.auth_group)
    try:
        os.chown(config.config_dir, -1, gid)
        os.chmod(config.config_dir, 0o710)
        for path in (config.token_path, fingerprint_path):
            if path.exists():
                os.chown(path, -1, gid)
                os.chmod(path, 0o640)
    except OSError as exc:
        raise ConfigError(f"--auth-group {config.auth_group}: cannot share the token: {exc.strerror}") from None


def group_may_read(config: DaemonConfig, path: Path) -> bool:
    """With --auth-group, the daemon reads a client's file by path only if the group could read it too
    (file readable, every parent directory searchable, by the group or by others); otherwise members
    could make the daemon read its owner's private files for them. Always True without --auth-group."""
    if config.auth_group is None:
        return True
    gid = group_id(config.auth_group)

    def allowed(p: Path, group_bit: int, other_bit: int) -> bool:
        try:
            st = os.stat(p)
        except OSError:
            return False
        return bool(st.st_mode & other_bit) or (st.st_gid == gid and bool(st.st_mode & group_bit))

    if not allowed(path, stat.S_IRGRP, stat.S_IROTH):
        return False
    return all(allowed(parent, stat.S_IXGRP, stat.S_IXOTH) for parent in path.parents)


def unpublish(config: DaemonConfig) -> None:
    with contextlib.suppress(OSError):
        (config.config_dir / FINGERPRINT_FILENAME).unlink()


def _tls_context(config_dir: Path, host: str) -> tuple[ssl.SSLContext, str]:
    cert_path, key_path = config_dir / CERT_FILENAME, config_dir / KEY_FILENAME
    if not (cert_path.exists() and key_path.exists()):
        cert_pem, key_pem = _self_signed(host)
        write_secret_file(key_path, key_pem)
        write_secret_file(cert_path, cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the certificate {cert_path}: {exc}; delete it to make a new one") from None
    der = ssl.PEM_cert_to_DER_cert(cert_path.read_text(encoding="ascii"))
    return context, hashlib.sha256(der).hexdigest()


def _self_signed(host: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kachery-p2p control endpoint")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem
