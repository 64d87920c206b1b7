"""Node identity: the key file on disk, the node id, signatures."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kachery_p2p.errors import IdentityError
from kachery_p2p.quic.identity import NodeIdentity, verify_signature

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
def test_load_or_create_creates_private_key_0600_and_reloads_same_id(tmp_path: Path) -> None:
    config_dir = tmp_path / "new" / "config"
    first = NodeIdentity.load_or_create(config_dir)
    key_path = config_dir / "private.pem"
    assert _mode(config_dir) == 0o700
    assert _mode(key_path) == 0o600
    assert _mode(config_dir / "public.pem") == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in config_dir.iterdir()) == ["private.pem", "public.pem"]  # no temp left
    public = serialization.load_pem_public_key((config_dir / "public.pem").read_bytes())
    assert (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex() == first.node_id
    )

    second = NodeIdentity.load_or_create(config_dir)
    assert second.node_id == first.node_id
    assert second.private_pem() == first.private_pem()


@posix_only
def test_key_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        NodeIdentity.load_or_create(tmp_path)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.pem") == 0o600


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_key_open_to_others(tmp_path: Path, mode: int) -> None:
    NodeIdentity.load_or_create(tmp_path)
    key_path = tmp_path / "private.pem"
    key_path.chmod(mode)
    with pytest.raises(IdentityError) as info:
        NodeIdentity.load_or_create(tmp_path)
    message = str(info.value)
    assert f"chmod 600 {key_path}" in message
    assert "\n" not in message
    key_path.chmod(0o600)
    NodeIdentity.load_or_create(tmp_path)


@posix_only
@pytest.mark.parametrize(
    "content",
    [
        b"not a key at all",
        b"",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
)
def test_malformed_key_file(tmp_path: Path, content: bytes) -> None:
    key_path = tmp_path / "private.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    with pytest.raises(IdentityError) as info:
        NodeIdentity.load_or_create(tmp_path)
    assert str(key_path) in str(info.value)


def test_non_ed25519_and_encrypted_keys_are_refused() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(IdentityError, match="Ed25519"):
        NodeIdentity.from_pem(p256)
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(IdentityError):
        NodeIdentity.from_pem(encrypted)
    with pytest.raises(IdentityError):
        NodeIdentity.from_private_bytes(b"short")


def test_node_id_is_raw_public_key_hex() -> None:
    key = Ed25519PrivateKey.generate()
    identity = NodeIdentity(key)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert identity.public_key_bytes == raw
    assert identity.node_id == raw.hex()
    assert len(identity.node_id) == 64
    assert identity.node_id == identity.node_id.lower()
    assert NodeIdentity.from_pem(identity.private_pem()).node_id == identity.node_id


def test_known_seed_gives_known_node_id() -> None:
    # RFC 8032-style check: the seed 00..1f has this well-known public key.
    identity = NodeIdentity.from_private_bytes(bytes(range(32)))
    assert identity.node_id == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"


def test_sign_and_verify() -> None:
    identity = NodeIdentity.generate()
    other = NodeIdentity.generate()
    data = b"kachery-p2p test message"
    signature = identity.sign(data)
    assert len(signature) == 64
    assert verify_signature(identity.node_id, signature, data)
    assert verify_signature(identity.node_id.upper(), signature, data)
    assert not verify_signature(identity.node_id, signature, data + b"!")
    assert not verify_signature(other.node_id, signature, data)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(identity.node_id, tampered, data)


@pytest.mark.parametrize(
    ("node_id", "signature", "data"),
    [
        ("zz" * 32, b"\x00" * 64, b"x"),
        ("ab" * 31, b"\x00" * 64, b"x"),
        ("ab" * 32, b"\x00" * 63, b"x"),
        ("ab" * 32, b"", b"x"),
        (None, b"\x00" * 64, b"x"),
        ("ab" * 32, None, b"x"),
        ("ab" * 32, b"\x00" * 64, None),
        ("ab" * 32, "not bytes", b"x"),
        (" " + "ab" * 31 + "a", b"\x00" * 64, b"x"),
    ],
)
def test_verify_signature_garbage_is_false(node_id: object, signature: object, data: object) -> None:
    assert verify_signature(node_id, signature, data) is False  # type: ignore[arg-type]


@posix_only
def test_key_creation_never_replaces_an_existing_key(tmp_path: Path) -> None:
    # Two processes racing to create the key: the loser must keep the winner's key.
    from kachery_p2p.quic.identity import _write_atomic

    key_path = tmp_path / "private.pem"
    winner = NodeIdentity.generate()
    assert _write_atomic(key_path, winner.private_pem(), 0o600, replace=False)
    assert not _write_atomic(key_path, NodeIdentity.generate().private_pem(), 0o600, replace=False)
    assert NodeIdentity.load_or_create(tmp_path).node_id == winner.node_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.pem", "public.pem"]
