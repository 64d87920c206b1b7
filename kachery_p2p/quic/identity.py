"""A node's Ed25519 identity, its TLS certificate, and the check that a peer is who we dialed.

The node id is the 64 lower-case hex digits of the raw 32-byte Ed25519 public key, as in the
original kachery-p2p. The certificate profile is described in ``certs/README.md``; the test
vectors in ``certs/vectors/`` pin it byte for byte.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from ..errors import IdentityError, RemoteProtocolError
from ..ids import (
    is_hex64,
    short_node_id,
)

PRIVATE_KEY_FILE = "private.pem"
PUBLIC_KEY_FILE = "public.pem"
CERT_ORGANIZATION = "kachery-p2p"
SAN_DNS_SUFFIX = "kachery-p2p.invalid"
# Fixed validity: peers never check dates (see certs/README.md), so clock skew cannot break a handshake.
CERT_NOT_BEFORE = datetime.datetime(2020, 1, 1, 0, 0, 0, tzinfo=datetime.timezone.utc)
CERT_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)



def _raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class NodeIdentity:
    """An Ed25519 private key and everything derived from it: node id, signatures, certificate."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise IdentityError(f"a node key must be Ed25519, not {type(private_key).__name__}")
        self.private_key = private_key
        self.public_key_bytes: bytes = _raw_public_key(private_key.public_key())
        self.node_id: str = self.public_key_bytes.hex()
        self._certificate: x509.Certificate | None = None

    def __repr__(self) -> str:
        return f"NodeIdentity(node_id={self.node_id!r})"

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random identity."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> NodeIdentity:
        """An identity from the raw 32-byte Ed25519 private key (the seed)."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
            raise IdentityError("an Ed25519 private key is exactly 32 raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    @classmethod
    def from_pem(cls, data: bytes) -> NodeIdentity:
        """An identity from an unencrypted PKCS8 PEM private key; IdentityError if it is not one."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise IdentityError(f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"the node key must be Ed25519, not {type(key).__name__}")
        return cls(key)

    @classmethod
    def load_or_create(cls, config_dir: Path) -> NodeIdentity:
        """Load ``config_dir/private.pem``, or create it (mode 0600) with a new key if it is missing.

        Raises IdentityError if the key file is readable by group or others, or is not a key.
        """
        config_dir = Path(config_dir)
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = config_dir / PRIVATE_KEY_FILE
        if not key_path.exists():
            _create_key_file(key_path, Ed25519PrivateKey.generate())
        identity = _load_key_file(key_path)
        public_path = config_dir / PUBLIC_KEY_FILE
        if not public_path.exists():
            _write_atomic(public_path, identity.public_pem(), 0o644)
        return identity

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS8 PEM (what ``private.pem`` holds)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return self.private_key.sign(data)

    def certificate(self) -> x509.Certificate:
        """This node's self-signed TLS certificate (built once, then cached)."""
        if self._certificate is None:
            self._certificate = make_certificate(self.private_key)
        return self._certificate

    def certificate_der(self) -> bytes:
        """The certificate in DER."""
        return self.certificate().public_bytes(serialization.Encoding.DER)


def _write_atomic(path: Path, data: bytes, mode: int, *, replace: bool = True) -> bool:
    """Write ``data`` to a temp file created with ``mode``, then move it to ``path``.

    With ``replace=False`` an existing ``path`` is never overwritten (a hard link is used, which
    fails if the name exists); returns False in that case.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # umask may have removed bits we want (public file)
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: small race, but never a partial file
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_key_file(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        # If another process created the key first, keep theirs: both then load the same identity.
        _write_atomic(path, pem, 0o600, replace=False)
    except OSError as exc:
        raise IdentityError(f"cannot write node key {path}: {exc.strerror or exc}") from None


def _load_key_file(path: Path) -> NodeIdentity:
    try:
        mode = path.stat().st_mode
        if os.name == "posix" and mode & 0o077:
            raise IdentityError(
                f"node key {path} is open to group or other users (mode {mode & 0o777:04o}); "
                f"fix it with: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read node key {path}: {exc.strerror or exc}") from None
    try:
        return NodeIdentity.from_pem(data)
    except IdentityError as exc:
        raise IdentityError(f"malformed node key {path}: {exc}") from None


def verify_signature(node_id: str, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is node ``node_id``'s Ed25519 signature of ``data``; never raises."""
    try:
        if not is_hex64(node_id, any_case=True):
            return False
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
            return False
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return False
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(node_id))
        key.verify(bytes(signature), bytes(data))
        return True
    except Exception:
        return False


def certificate_serial_number(public_key_bytes: bytes) -> int:
    """The certificate serial: the first 16 bytes of sha256(public key), shifted right by one bit.

    Positive, at most 127 bits (fits RFC 5280's 20-octet limit), and the same for the same key.
    """
    digest = hashlib.sha256(public_key_bytes).digest()
    return (int.from_bytes(digest[:16], "big") >> 1) or 1


def certificate_dns_name(node_id: str) -> str:
    """The informational SAN: the node id split in two 32-hex labels (a DNS label holds <= 63)."""
    return f"{node_id[:32]}.{node_id[32:]}.{SAN_DNS_SUFFIX}"


def make_certificate(private_key: Ed25519PrivateKey) -> x509.Certificate:
    """The node's self-signed X.509 v3 certificate; deterministic for a given key.

    Subject = issuer = O=kachery-p2p, CN=<node id>; the subject key is the node key itself and the
    certificate is signed with it. See ``certs/README.md`` for the whole profile.
    """
    raw = _raw_public_key(private_key.public_key())
    node_id = raw.hex()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CERT_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(certificate_serial_number(raw))
        .not_valid_before(CERT_NOT_BEFORE)
        .not_valid_after(CERT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(certificate_dns_name(node_id))]), critical=False
        )
    )
    return builder.sign(private_key, algorithm=None)


def _describe_key(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ECDSA {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    return type(public_key).__name__


def node_id_from_certificate(cert: x509.Certificate) -> str:
    """The node id a peer certificate proves; RemoteProtocolError(code="bad_certificate") otherwise.

    Checks that the subject key is Ed25519 and that the certificate is signed by that same key.
    Names, dates and extensions are not checked (see certs/README.md).
    """
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RemoteProtocolError(
            f"peer certificate has an unusable public key: {exc}", code="bad_certificate"
        ) from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise RemoteProtocolError(
            f"peer certificate key is {_describe_key(public_key)}, not Ed25519: it is not a kachery-p2p node",
            code="bad_certificate",
        )
    try:
        public_key.verify(cert.signature, cert.tbs_certificate_bytes)
    except (InvalidSignature, ValueError):
        raise RemoteProtocolError(
            "peer certificate is not signed by its own key", code="bad_certificate"
        ) from None
    return _raw_public_key(public_key).hex()


def check_peer_certificate(cert: x509.Certificate | None, expected_node_id: str | None) -> str:
    """The peer's node id from its certificate, checked against the node id we dialed (if any).

    Raises RemoteProtocolError with code "bad_certificate" (no or invalid certificate) or
    "wrong_node_id" (a valid node, but not the one expected).
    """
    if cert is None:
        raise RemoteProtocolError("peer presented no certificate", code="bad_certificate")
    node_id = node_id_from_certificate(cert)
    if expected_node_id is not None and node_id != expected_node_id.lower():
        raise RemoteProtocolError(
            f"peer is node {short_node_id(node_id)}, not the node {short_node_id(expected_node_id.lower())} "
            "we dialed",
            code="wrong_node_id",
        )
    return node_id
