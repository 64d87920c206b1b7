"""The relay's server-side view of registered nodes: signed rendezvous records and observed addresses.

Sans-IO: no sockets, no clock (``now`` is passed in), randomness injectable. ``daemon/`` calls
``publish`` when a node sends its record over its authenticated QUIC session, ``lookup`` when a node
asks for channel peers, ``remove`` when a session ends and ``expire`` from a timer (``next_expiry``).

Rules:

- A record is stored only under the node id its QUIC session proved: a node cannot register under
  another node's id ("not_authorized").
- Per node the registry keeps the newest timestamp ever accepted (high-water mark) and accepts only
  strictly newer records, so an old record can never be replayed to move a node back to an old
  address or channel set ("bad_request"). The mark outlives a removed node for MAX_LIFETIME + 1 s,
  after which any record older than it has expired anyway (like ``AnnouncementTracker``); the node
  must keep its own timestamps increasing across reconnects (a stepped-back clock is refused).
- At most ``max_nodes`` nodes are registered; a further node is refused with "busy" (an existing
  registration is never evicted to make room).
- The observed address (what the relay's socket sees for the node's session) is where relay frames
  to that node go, and ``node_at`` maps a frame's source address back to its node. One address
  belongs to one node: a node that publishes from an address another node held takes it over, and
  the other node, whose mapping is evidently gone, is unregistered.
- ``lookup`` returns the shared form of each record (no rendezvous ids, see ``channels.rendezvous``),
  never the asker, each node once, newest first, at most ``max_results`` (a random sample when more
  match, so repeated lookups reach everyone).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..channels.rendezvous import MAX_LIFETIME, RendezvousRecord, decode_record
from ..errors import LocalProtocolError, RemoteProtocolError
from ..ids import format_address, is_hex64

Address = tuple[str, int]



@dataclass
class _Entry:
    record: RendezvousRecord
    address: Address


def _address(address: tuple[Any, ...]) -> Address:
    """(host, port) from a socket address (IPv6 ones have 4 items)."""
    return (str(address[0]), int(address[1]))


class Registry:
    """Registered nodes by node id, rendezvous id and observed address."""

    def __init__(
        self,
        max_nodes: int = 10_000,
        max_ids_per_node: int = 64,
        max_results: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        if max_nodes < 1 or max_ids_per_node < 0 or max_results < 1:
            raise ValueError("registry limits must be positive")
        self.max_nodes = max_nodes
        self.max_ids_per_node = max_ids_per_node
        self.max_results = max_results
        self._rng = rng if rng is not None else random.Random()
        self._entries: dict[str, _Entry] = {}
        self._by_id: dict[str, set[str]] = {}
        self._by_address: dict[Address, str] = {}
        self._marks: dict[str, float] = {}
        self._counts: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()

    def _refuse(self, code: str, message: str) -> RemoteProtocolError:
        self._refused[code] += 1
        return RemoteProtocolError(message, code=code)

    def publish(
        self,
        record: RendezvousRecord | Mapping[str, Any],
        observed_address: tuple[Any, ...],
        session_node_id: str,
        now: float,
    ) -> None:
        """Register or refresh a node. ``record`` is a dict as received (it is then checked with
        ``decode_record``) or a record from ``decode_record``. RemoteProtocolError with code
        "bad_request" (bad, expired, stale or over-limit record), "not_authorized" (another node's
        record) or "busy" (registry full); nothing changes on a refusal."""
        if isinstance(record, Mapping):
            try:
                record = decode_record(record, now)
            except RemoteProtocolError as exc:
                raise self._refuse(exc.code, str(exc)) from None
        if not isinstance(record, RendezvousRecord) or not record.wire:
            raise LocalProtocolError("publish a dict as received or a record from decode_record")
        node_id = record.node_id
        if not isinstance(session_node_id, str) or node_id != session_node_id.lower():
            raise self._refuse("not_authorized", "a node can only publish its own rendezvous record")
        if not record.lists_its_ids():
            raise self._refuse("bad_request", "record does not list the rendezvous ids it was signed with")
        if now > record.expires:
            raise self._refuse("bad_request", "record has expired")
        if len(record.rendezvous_ids) > self.max_ids_per_node:
            raise self._refuse(
                "bad_request",
                f"this relay indexes at most {self.max_ids_per_node} rendezvous ids per node, "
                f"not {len(record.rendezvous_ids)}",
            )
        mark = self._marks.get(node_id)
        if mark is not None and record.timestamp <= mark:
            raise self._refuse("bad_request", f"record is not newer than the last one accepted (timestamp {mark})")
        if node_id not in self._entries and len(self._entries) >= self.max_nodes:
            self.expire(now)
            if len(self._entries) >= self.max_nodes:
                raise self._refuse("busy", f"relay is full: {self.max_nodes} nodes registered")
        address = _address(observed_address)
        self._unlink(node_id)
        holder = self._by_address.get(address)
        if holder is not None and holder != node_id:
            self._counts["address_taken"] += 1
            self.remove(holder)
        self._entries[node_id] = _Entry(record, address)
        self._by_address[address] = node_id
        for rid in record.rendezvous_ids:
            self._by_id.setdefault(rid, set()).add(node_id)
        self._marks[node_id] = record.timestamp
        self._counts["published"] += 1
        if len(self._marks) > 2 * self.max_nodes:  # else ``expire`` (timer) trims them
            self._trim_marks(now)

    def _unlink(self, node_id: str) -> _Entry | None:
        entry = self._entries.pop(node_id, None)
        if entry is None:
            return None
        if self._by_address.get(entry.address) == node_id:
            del self._by_address[entry.address]
        for rid in entry.record.rendezvous_ids:
            members = self._by_id.get(rid)
            if members is not None:
                members.discard(node_id)
                if not members:
                    del self._by_id[rid]
        return entry

    def _trim_marks(self, now: float) -> None:
        """Forget marks of gone nodes once safe; beyond 2 * max_nodes marks, forget the oldest gone
        ones (safe too: only the node's own authenticated session can publish under its id)."""
        for node_id, mark in list(self._marks.items()):
            if node_id not in self._entries and now > mark + MAX_LIFETIME + 1.0:
                del self._marks[node_id]
        excess = len(self._marks) - 2 * self.max_nodes
        if excess > 0:
            gone = sorted((mark, node_id) for node_id, mark in self._marks.items() if node_id not in self._entries)
            for _, node_id in gone[:excess]:
                del self._marks[node_id]

    def lookup(
        self, rendezvous_ids: Iterable[str], asking_node_id: str, now: float, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Live nodes other than the asker that share any of ``rendezvous_ids``: a list of
        {"record": shared signed record, "observed": "host:port", "shared": [matching ids]}.
        RemoteProtocolError("bad_request") for malformed ids or more than ``max_ids_per_node``."""
        asked: list[str] = []
        for rid in rendezvous_ids:
            if not is_hex64(rid, any_case=True):
                raise self._refuse("bad_request", "lookup holds a malformed rendezvous id")
            if rid.lower() not in asked:
                asked.append(rid.lower())
            if len(asked) > self.max_ids_per_node:
                raise self._refuse("bad_request", f"a lookup holds at most {self.max_ids_per_node} rendezvous ids")
        asker = asking_node_id.lower() if isinstance(asking_node_id, str) else ""
        shared: dict[str, list[str]] = {}
        for rid in asked:
            for node_id in self._by_id.get(rid, ()):
                if node_id != asker and now <= self._entries[node_id].record.expires:
                    shared.setdefault(node_id, []).append(rid)
        cap = self.max_results if limit is None else max(0, min(limit, self.max_results))
        chosen = list(shared)
        if len(chosen) > cap:
            chosen = self._rng.sample(sorted(chosen), cap)
        chosen.sort(key=lambda n: (-self._entries[n].record.timestamp, n))
        self._counts["lookups"] += 1
        return [
            {
                "record": self._entries[n].record.shared_dict(),
                "observed": format_address(self._entries[n].address),
                "shared": shared[n],
            }
            for n in chosen
        ]

    def remove(self, node_id: str, address: tuple[Any, ...] | None = None) -> bool:
        """Unregister a node (its session ended). With ``address``, only if the node is still
        registered at that address, so the end of an old session cannot remove a newer one."""
        entry = self._entries.get(node_id)
        if entry is None or (address is not None and entry.address != _address(address)):
            return False
        self._unlink(node_id)
        self._counts["removed"] += 1
        return True

    def set_address(self, node_id: str, address: tuple[Any, ...]) -> bool:
        """The node's session moved to a new address (QUIC migration); False if not registered."""
        entry = self._entries.get(node_id)
        if entry is None:
            return False
        new = _address(address)
        holder = self._by_address.get(new)
        if holder is not None and holder != node_id:
            self._counts["address_taken"] += 1
            self.remove(holder)
        if self._by_address.get(entry.address) == node_id:
            del self._by_address[entry.address]
        entry.address = new
        self._by_address[new] = node_id
        return True

    def expire(self, now: float) -> list[str]:
        """Unregister nodes whose record expired (``now > expires``); returns their node ids."""
        gone = [node_id for node_id, entry in self._entries.items() if now > entry.record.expires]
        for node_id in gone:
            self._unlink(node_id)
        self._counts["expired"] += len(gone)
        self._trim_marks(now)
        return gone

    def next_expiry(self) -> float | None:
        """When the next record expires (call ``expire`` just after it), or None if none is held."""
        return min((entry.record.expires for entry in self._entries.values()), default=None)

    def address_of(self, node_id: str) -> Address | None:
        """Where relay frames to ``node_id`` go, or None if it is not registered."""
        entry = self._entries.get(node_id)
        return entry.address if entry is not None else None

    def node_at(self, address: tuple[Any, ...]) -> str | None:
        """The registered node whose session uses ``address`` (the source of a relay frame)."""
        return self._by_address.get(_address(address))

    def registered(self, node_id: str) -> bool:
        return node_id in self._entries

    def record_of(self, node_id: str) -> RendezvousRecord | None:
        entry = self._entries.get(node_id)
        return entry.record if entry is not None else None

    def stats(self) -> dict[str, Any]:
        """Counters for logs and status pages."""
        return {
            "nodes": len(self._entries),
            "max_nodes": self.max_nodes,
            "rendezvous_ids": len(self._by_id),
            "published": self._counts["published"],
            "lookups": self._counts["lookups"],
            "removed": self._counts["removed"],
            "expired": self._counts["expired"],
            "address_taken": self._counts["address_taken"],
            "refused": dict(self._refused),
        }
