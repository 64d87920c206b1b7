"""A relay's state, sans-IO: ONE source of truth for who is registered where and what may be forwarded.

``relay.registry.Registry`` holds the signed records, their expiry, ``--relay-max-nodes`` and the
address map (a node's address is the one its authenticated QUIC session published from, so relay
frames are bound to that session: ``node_at(source address)``); ``relay.limits.ForwardingPolicy``
holds what each node may forward. This object combines them and adds the rule that only nodes which
proved a shared rendezvous id (each published it in a record signed with its own key) may be
connected or forwarded to each other. ``now`` is wall-clock time (records carry wall-clock stamps).

A source address can be forged (issue 10 #14): a node that asks for it gets a random frame token with
its registration (``frame_token``, sent back over its authenticated session, new for each new
registration or address), and from then on only frames carrying that token are its frames; others
"from" its address are dropped before they count against its limits.

Contract: ``publish`` / ``lookup`` / ``connect_target`` / ``session_ended`` from the request pump;
``receive_frame(data, source, now)`` returns the datagram to send and where, or None (dropped and
counted); ``get_timer()`` / ``handle_timer(now)`` expire records.
"""

from __future__ import annotations

import hmac
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..channels.rendezvous import RendezvousRecord
from ..errors import RemoteProtocolError
from ..ids import format_address
from .frames import FRAME_TOKEN_SIZE, decode_relay_frame, encode_from_relay
from .limits import ForwardingPolicy, RelayLimits, TokenBucket
from .registry import Address, Registry

CONNECT_RATE = 1.0  # connect requests per second per node, after a burst of
CONNECT_BURST = 8
MAX_PUNCH_CANDIDATES = 8


class RelayState:
    def __init__(self, limits: RelayLimits | None = None, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.limits = limits if limits is not None else RelayLimits()
        self._random_bytes = random_bytes
        self._frame_tokens: dict[str, tuple[Address, bytes]] = {}  # node -> (registered address, token)
        self.registry = Registry(max_nodes=self.limits.max_registrations)
        self.policy = ForwardingPolicy(self.limits)
        self.stats: Counter[str] = Counter()
        self._pairs: dict[tuple[str, str], bool] = {}
        self._connects: dict[str, TokenBucket] = {}

    # -- requests over authenticated sessions --------------------------------------------------------
    def publish(self, record: Mapping[str, Any], observed: Address, session_node_id: str, now: float) -> str:
        """Register the session's node at its observed address; returns that address as text."""
        self.registry.publish(record, observed, session_node_id, now)
        self._pairs.clear()
        return format_address(observed)

    def frame_token(self, node_id: str) -> bytes:
        """The frame token of ``node_id``'s registration (call after ``publish``): the same while it
        stays registered at the same address, a new one for a new registration. From now on only
        frames carrying it are taken as this node's."""
        address = self.registry.address_of(node_id)
        if address is None:
            raise RemoteProtocolError("that node is not registered with this relay", code="not_found")
        held = self._frame_tokens.get(node_id)
        if held is None or held[0] != address:
            held = self._frame_tokens[node_id] = (address, self._random_bytes(FRAME_TOKEN_SIZE))
        return held[1]

    def lookup(self, rendezvous_ids: Iterable[str], asking_node_id: str, now: float) -> list[dict[str, Any]]:
        self.registry.expire(now)
        return self.registry.lookup(rendezvous_ids, asking_node_id, now)

    def connect_target(self, source: str, target: str, now: float) -> Address:
        """Where ``target`` is, for a punch ``source`` asked for; RemoteProtocolError unless both are
        registered with live records that share a rendezvous id, and ``source`` asks at most
        CONNECT_BURST times at once and CONNECT_RATE per second (each makes the target send probes)."""
        bucket = self._connects.get(source)
        if bucket is None:
            bucket = self._connects[source] = TokenBucket(CONNECT_RATE, CONNECT_BURST)
        if not bucket.allow(1, now):
            self.stats["refused: connect rate"] += 1
            raise RemoteProtocolError("too many connect requests; try again later", code="busy")
        address = self.registry.address_of(target)
        if address is None or not self._live(target, now) or not self._live(source, now):
            raise RemoteProtocolError("that node is not registered with this relay", code="not_found")
        if not self._share(source, target):
            self.stats["refused: no shared channel"] += 1
            raise RemoteProtocolError("that node shares no channel with you", code="not_authorized")
        return address

    def punch_candidates(self, node_id: str, offered: Iterable[str], observed: Address) -> list[str]:
        """The candidates of ``node_id`` passed on to its peer in a punch: only addresses it published
        in its signed record, then the address the relay sees, so a node cannot make its peer probe
        chosen victims."""
        record = self.registry.record_of(node_id)
        published = set(record.candidates) if record is not None else set()
        chosen = [c for c in dict.fromkeys(offered) if c in published]
        seen = format_address(observed)
        return [*[c for c in chosen if c != seen], seen][:MAX_PUNCH_CANDIDATES]

    def session_ended(self, node_id: str, address: Address) -> None:
        """The node's session at ``address`` ended: unregister it (unless it re-registered elsewhere)."""
        self._connects.pop(node_id, None)
        if self.registry.remove(node_id, address):
            self._frame_tokens.pop(node_id, None)
            self.policy.end_session(node_id)
            self._pairs.clear()

    # -- relay frames ---------------------------------------------------------------------------------
    def receive_frame(self, data: bytes, source_addr: Address, now: float) -> tuple[bytes, Address] | None:
        source = self.registry.node_at(source_addr)
        if source is None or not self._live(source, now):
            return self._drop("unregistered source")
        try:
            frame = decode_relay_frame(data)
        except ValueError:
            return self._drop("malformed")
        if frame.kind != "to_relay":
            return self._drop("malformed")
        held = self._frame_tokens.get(source)
        if held is not None and not hmac.compare_digest(frame.token, held[1]):
            return self._drop("bad frame token")  # forged "from" the node: costs it nothing
        target_addr = self.registry.address_of(frame.node_id)
        if target_addr is None or not self._live(frame.node_id, now):
            return self._drop("unregistered target")
        if not self._share(source, frame.node_id):
            return self._drop("no shared channel")
        allowed, reason = self.policy.decide(source, frame.node_id, len(frame.payload), now)
        if not allowed:
            return self._drop(reason)
        self.stats["forwarded"] += 1
        self.stats["forwarded_bytes"] += len(frame.payload)
        return encode_from_relay(source, frame.payload), target_addr

    # -- timers ---------------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        return self.registry.next_expiry()

    def handle_timer(self, now: float) -> list[str]:
        gone = self.registry.expire(now)
        for node_id in gone:
            self.policy.end_session(node_id)
            self._frame_tokens.pop(node_id, None)
        for node_id in [n for n in self._frame_tokens if not self.registry.registered(n)]:
            del self._frame_tokens[node_id]  # taken over by another node's registration
        if gone:
            self._pairs.clear()
        return gone

    def info(self) -> dict[str, Any]:
        registry = self.registry.stats()
        return {
            **{k: v for k, v in self.stats.items()},
            "forwarded": self.stats["forwarded"],
            "forwarded_bytes": self.stats["forwarded_bytes"],
            "dropped": self.stats["dropped"],
            "registered": registry["nodes"],
            "maxNodes": registry["max_nodes"],
        }

    # -- helpers --------------------------------------------------------------------------------------
    def _live(self, node_id: str, now: float) -> bool:
        record = self.registry.record_of(node_id)
        return record is not None and now <= record.expires

    def _share(self, a: str, b: str) -> bool:
        key = (a, b) if a < b else (b, a)
        known = self._pairs.get(key)
        if known is None:
            ra, rb = self.registry.record_of(a), self.registry.record_of(b)
            known = _ids(ra) & _ids(rb) != set()
            if len(self._pairs) > 4 * self.registry.max_nodes:
                self._pairs.clear()
            self._pairs[key] = known
        return known

    def _drop(self, reason: str) -> tuple[bytes, Address] | None:
        self.stats["dropped"] += 1
        self.stats[f"dropped: {reason}"] += 1
        return None


def _ids(record: RendezvousRecord | None) -> set[str]:
    return set(record.rendezvous_ids) if record is not None else set()
