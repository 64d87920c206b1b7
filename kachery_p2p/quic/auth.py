"""The in-band proof that a QUIC client owns its node key (sans-IO).

aioquic's server cannot ask for a client certificate, so after the handshake the server sends a fresh
random nonce and the client signs::

    "kachery-p2p/1 client-auth" || 0x00 || server node id || client node id || server nonce || client nonce

(ids as 64 ASCII hex digits, nonces as 32 hex digits). The server node id ties the proof to the server
the client checked in the TLS handshake; the server nonce makes it fresh, so a proof recorded on one
connection is refused on any other. Channel membership proofs (``channels.membership``) are bound to
both nonces too.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..channels.membership import membership_proof, shared_channels
from ..errors import RemoteProtocolError
from .identity import NodeIdentity, verify_signature
from .messages import Auth

_CONTEXT = b"kachery-p2p/1 client-auth\x00"


def new_nonce(random: Callable[[int], bytes] = os.urandom) -> str:
    return random(16).hex()


def auth_payload(server_node_id: str, client_node_id: str, server_nonce: str, client_nonce: str) -> bytes:
    return _CONTEXT + (server_node_id + client_node_id + server_nonce + client_nonce).encode("ascii")


def channel_binding(server_nonce: str, client_nonce: str, extra: str = "") -> bytes:
    return (server_nonce + client_nonce + extra).encode("ascii")


def make_auth(
    identity: NodeIdentity,
    server_node_id: str,
    server_nonce: str,
    label: str,
    channels: list[str],
    random: Callable[[int], bytes] = os.urandom,
) -> dict[str, object]:
    """The client's ``auth`` message for a server that sent ``server_nonce``."""
    client_nonce = new_nonce(random)
    signature = identity.sign(auth_payload(server_node_id, identity.node_id, server_nonce, client_nonce))
    binding = channel_binding(server_nonce, client_nonce)
    return {
        "op": "auth",
        "nodeId": identity.node_id,
        "nonce": client_nonce,
        "signature": signature.hex(),
        "label": label,
        "channelProofs": [membership_proof(name, binding, identity.node_id) for name in channels],
    }


@dataclass(frozen=True)
class VerifiedClient:
    node_id: str
    label: str
    client_nonce: str
    shared_channels: list[str]


def verify_auth(
    auth: Auth, server_node_id: str, server_nonce: str, my_channels: list[str]
) -> VerifiedClient:
    """Check the client's signature; raise RemoteProtocolError('unauthenticated') if it fails."""
    payload = auth_payload(server_node_id, auth.node_id, server_nonce, auth.nonce)
    if not verify_signature(auth.node_id, bytes.fromhex(auth.signature), payload):
        raise RemoteProtocolError("the client's key proof does not verify", code="unauthenticated")
    if hmac.compare_digest(auth.node_id, server_node_id):
        raise RemoteProtocolError("a node cannot connect to itself", code="unauthenticated")
    binding = channel_binding(server_nonce, auth.nonce)
    shared = shared_channels(my_channels, list(auth.channel_proofs), binding, auth.node_id)
    return VerifiedClient(auth.node_id, auth.label, auth.nonce, shared)


def my_channel_proofs(identity: NodeIdentity, channels: list[str], binding: bytes) -> list[str]:
    return [membership_proof(name, binding, identity.node_id) for name in channels]
