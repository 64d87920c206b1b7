"""Regenerate the certificate test vectors in certs/vectors/ (see certs/README.md).

    .venv/bin/python certs/make_vectors.py           # (re)write the files
    .venv/bin/python certs/make_vectors.py --check   # exit 1 if the files on disk differ

Every output is deterministic (fixed seeds, Ed25519 and deterministic ECDSA signatures), so running
it twice gives the same bytes; a difference means the certificate profile changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from kachery_p2p.quic.identity import (
    CERT_NOT_AFTER,
    CERT_NOT_BEFORE,
    NodeIdentity,
    certificate_serial_number,
    make_certificate,
)

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
NODE_SEED = bytes(range(32))
OTHER_SEED = bytes(range(32, 64))
P256_SCALAR = int.from_bytes(hashlib.sha256(b"kachery-p2p test vector p256").digest(), "big") % (2**255)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kachery-p2p"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _p256_certificate() -> x509.Certificate:
    """Same profile, but an ECDSA P-256 key: a valid TLS certificate that is not a kachery-p2p node."""
    key = ec.derive_private_key(P256_SCALAR, ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("p256-not-a-node"))
        .issuer_name(_name("p256-not-a-node"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(CERT_NOT_BEFORE)
        .not_valid_after(CERT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    try:
        return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    except TypeError:  # cryptography < 44: randomized ECDSA (the file then changes on every run)
        return builder.sign(key, hashes.SHA256())


def _foreign_signed_certificate(node: NodeIdentity, signer: Ed25519PrivateKey) -> x509.Certificate:
    """The node's key and name, but signed by another Ed25519 key: its self-signature fails."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(node.node_id))
        .issuer_name(_name(node.node_id))
        .public_key(node.private_key.public_key())
        .serial_number(certificate_serial_number(node.public_key_bytes))
        .not_valid_before(CERT_NOT_BEFORE)
        .not_valid_after(CERT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(signer, algorithm=None)


def build() -> dict[str, bytes]:
    """File name -> content for every vector file."""
    node = NodeIdentity.from_private_bytes(NODE_SEED)
    cert = make_certificate(node.private_key)
    der = cert.public_bytes(serialization.Encoding.DER)
    p256 = _p256_certificate()
    foreign = _foreign_signed_certificate(node, Ed25519PrivateKey.from_private_bytes(OTHER_SEED))
    vectors = {
        "description": "kachery-p2p certificate test vectors; regenerate with certs/make_vectors.py",
        "seed_hex": NODE_SEED.hex(),
        "node_id": node.node_id,
        "certificate_sha256": hashlib.sha256(der).hexdigest(),
        "serial_number": cert.serial_number,
        "accepted": [{"file": "node-cert.pem", "node_id": node.node_id}],
        "rejected": [
            {
                "file": "bad-p256-cert.pem",
                "code": "bad_certificate",
                "reason": "subject key is ECDSA P-256, not Ed25519",
            },
            {
                "file": "bad-foreign-signed-cert.pem",
                "code": "bad_certificate",
                "reason": "Ed25519 key of node_id, but signed by the key of seed " + OTHER_SEED.hex(),
            },
        ],
    }
    return {
        "node-key.pem": node.private_pem(),
        "node-cert.pem": _pem(cert),
        "node-cert.der": der,
        "bad-p256-cert.pem": _pem(p256),
        "bad-foreign-signed-cert.pem": _pem(foreign),
        "vectors.json": (json.dumps(vectors, indent=2) + "\n").encode(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [
            n
            for n, data in files.items()
            if not (VECTORS_DIR / n).is_file() or (VECTORS_DIR / n).read_bytes() != data
        ]
        for name in stale:
            print(f"differs: {VECTORS_DIR / name}", file=sys.stderr)
        return 1 if stale else 0
    VECTORS_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (VECTORS_DIR / name).write_bytes(data)
        print(f"wrote {VECTORS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
