"""The channels this node has joined, kept in ``<config dir>/channels.json``.

A channel is a name chosen by its users. Knowing the name is what makes a node a member, so the name
never leaves the node: peers prove membership to each other with keyed hashes bound to one connection
(see ``channel_key`` and ``membership_proof``), and relays index channels by ``rendezvous_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from pathlib import Path

from ..errors import ConfigError, UsageError
from ..ids import parse_channel_name

# Proofs of all channels travel in one auth message (<= 16 KiB frame): 200 fit with room to spare.
MAX_CHANNELS = 200
_KEY_CONTEXT = b"kachery-p2p channel key v1\x00"
_RENDEZVOUS_CONTEXT = b"kachery-p2p rendezvous v1\x00"
_PROOF_CONTEXT = b"kachery-p2p channel proof v1\x00"


def channel_key(name: str) -> bytes:
    """The 32-byte secret derived from a channel name."""
    return hashlib.sha256(_KEY_CONTEXT + name.encode("utf-8")).digest()


def rendezvous_id(name: str) -> str:
    """How a relay indexes a channel: a hash that does not reveal the name."""
    return hashlib.sha256(_RENDEZVOUS_CONTEXT + channel_key(name)).hexdigest()


def membership_proof(name: str, binding: bytes, prover_node_id: str) -> str:
    """Proof that the prover knows the channel name, valid only for this ``binding`` (nonces)."""
    message = _PROOF_CONTEXT + binding + prover_node_id.encode("ascii")
    return hmac.new(channel_key(name), message, hashlib.sha256).hexdigest()


def shared_channels(
    my_channels: list[str], proofs: list[str], binding: bytes, prover_node_id: str
) -> list[str]:
    """Which of my channels the peer proved it knows."""
    wanted = set(proofs)
    return [name for name in my_channels if membership_proof(name, binding, prover_node_id) in wanted]


class JoinedChannels:
    """The persisted list of joined channel names (order of joining kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._names: list[str] = self._load()

    def _load(self) -> list[str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read joined channels from {self.path}: {exc}") from exc
        names = data.get("joinedChannels") if isinstance(data, dict) else None
        if not isinstance(names, list):
            raise ConfigError(f"cannot read joined channels from {self.path}: unexpected content")
        return [parse_channel_name(name) for name in names]

    def names(self) -> list[str]:
        return list(self._names)

    def join(self, name: str) -> bool:
        """Join; False when already joined. UsageError beyond MAX_CHANNELS (the proofs of every
        channel travel in one authentication message, which has a size limit)."""
        name = parse_channel_name(name)
        if name in self._names:
            return False
        if len(self._names) >= MAX_CHANNELS:
            raise UsageError(f"a node can join at most {MAX_CHANNELS} channels; leave one first")
        self._names.append(name)
        self._save()
        return True

    def leave(self, name: str) -> bool:
        """Leave; False when not joined."""
        if name not in self._names:
            return False
        self._names.remove(name)
        self._save()
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"joinedChannels": self._names}, indent=2).encode("utf-8")
        fd, temp = tempfile.mkstemp(prefix=".channels.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
