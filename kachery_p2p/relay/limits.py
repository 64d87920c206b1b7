"""What a relay lets each node forward: rate, bytes per session, and distinct peers at once.

Sans-IO: no clock (``now`` is passed in). ``daemon/`` asks ``ForwardingPolicy.decide`` before it
forwards each relay frame (after checking that the target is registered) and drops the frame when
refused; refusals are counted per node and reason, never raised. ``end_session`` forgets a node
when its session with the relay ends, so the byte quota is per session.

All limits belong to the SOURCE of a frame: what A sends to B is charged to A. Limits apply to
whatever ``size`` the caller passes (the payload, or the whole frame).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

RATE_LIMIT = "rate limit"
BYTE_QUOTA = "byte quota"
TOO_MANY_PEERS = "too many relayed peers"


class TokenBucket:
    """``rate`` tokens (bytes) per second, at most ``burst`` saved up; starts full.

    ``allow(n, now)`` takes ``n`` tokens if there are that many, else takes none and says False, so
    a request larger than ``burst`` is never allowed. ``rate`` may be ``math.inf`` (no limit). A
    clock that steps back adds no tokens and does not break the bucket.
    """

    def __init__(self, rate: float, burst: float) -> None:
        if math.isnan(rate) or rate < 0 or math.isnan(burst) or burst < 0 or math.isinf(burst):
            raise ValueError(f"token bucket needs rate >= 0 and finite burst >= 0, not {rate}, {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def tokens(self, now: float) -> float:
        """The tokens available at ``now``."""
        if math.isinf(self.rate):
            return math.inf
        self._refill(now)
        return self._tokens

    def allow(self, n: int, now: float) -> bool:
        """Take ``n`` tokens at ``now`` if available."""
        if n < 0:
            raise ValueError("cannot take a negative number of tokens")
        if math.isinf(self.rate):
            return True
        self._refill(now)
        if n <= self._tokens:
            self._tokens -= n
            return True
        return False


@dataclass(frozen=True)
class RelayLimits:
    """A relay's limits per registered node (and on registrations). ConfigError if one is unusable."""

    max_registrations: int = 1000
    bytes_per_sec_per_node: float = 10e6
    burst_bytes: float = 4e6
    max_bytes_per_node: int = 50 * 2**30
    max_peers_per_node: int = 32
    peer_idle_sec: float = 120.0

    def __post_init__(self) -> None:
        checks = {
            "max_registrations": self.max_registrations >= 1,
            "bytes_per_sec_per_node": self.bytes_per_sec_per_node > 0,
            "burst_bytes": self.burst_bytes >= 2048 and math.isfinite(self.burst_bytes),
            "max_bytes_per_node": self.max_bytes_per_node >= 0,
            "max_peers_per_node": self.max_peers_per_node >= 1,
            "peer_idle_sec": self.peer_idle_sec > 0 and math.isfinite(self.peer_idle_sec),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"relay limit {name} cannot be {getattr(self, name)!r}")


@dataclass
class _NodeState:
    bucket: TokenBucket
    peers: dict[str, float] = field(default_factory=dict)
    bytes: int = 0
    frames: int = 0
    refused: Counter[str] = field(default_factory=Counter)


class ForwardingPolicy:
    """Per-source accounting: token bucket, bytes this session, recently used destinations."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits if limits is not None else RelayLimits()
        self._nodes: dict[str, _NodeState] = {}
        self._refused: Counter[str] = Counter()

    def _state(self, node_id: str) -> _NodeState:
        state = self._nodes.get(node_id)
        if state is None:
            bucket = TokenBucket(self.limits.bytes_per_sec_per_node, self.limits.burst_bytes)
            state = self._nodes[node_id] = _NodeState(bucket)
        return state

    def _forget_idle(self, state: _NodeState, now: float) -> None:
        idle = self.limits.peer_idle_sec
        for peer, last in list(state.peers.items()):
            if now - last > idle:
                del state.peers[peer]

    def decide(self, source: str, target: str, size: int, now: float) -> tuple[bool, str]:
        """(True, "") to forward ``size`` bytes from ``source`` to ``target``, or (False, reason)
        with reason "too many relayed peers", "byte quota" or "rate limit" (checked in that order;
        a refused frame costs nothing)."""
        state = self._state(source)
        self._forget_idle(state, now)
        reason = ""
        if target not in state.peers and len(state.peers) >= self.limits.max_peers_per_node:
            reason = TOO_MANY_PEERS
        elif state.bytes + size > self.limits.max_bytes_per_node:
            reason = BYTE_QUOTA
        elif not state.bucket.allow(size, now):
            reason = RATE_LIMIT
        if reason:
            state.refused[reason] += 1
            self._refused[reason] += 1
            return False, reason
        state.peers[target] = max(now, state.peers.get(target, now))
        state.bytes += size
        state.frames += 1
        return True, ""

    def end_session(self, node_id: str) -> None:
        """Forget a node whose relay session ended (its quota starts afresh in a new session)."""
        self._nodes.pop(node_id, None)

    def forget_idle(self, now: float) -> None:
        """Drop idle peer pairs of every node (``decide`` also does it for the source it sees)."""
        for state in self._nodes.values():
            self._forget_idle(state, now)

    def stats(self, node_id: str | None = None) -> dict[str, Any]:
        """One node's counters; without ``node_id``, totals over all nodes."""
        if node_id is None:
            return {
                "nodes": len(self._nodes),
                "bytes": sum(s.bytes for s in self._nodes.values()),
                "frames": sum(s.frames for s in self._nodes.values()),
                "refused": dict(self._refused),
            }
        state = self._nodes.get(node_id)
        if state is None:
            return {"bytes": 0, "frames": 0, "peers": 0, "bytes_left": self.limits.max_bytes_per_node, "refused": {}}
        return {
            "bytes": state.bytes,
            "frames": state.frames,
            "peers": len(state.peers),
            "bytes_left": max(0, self.limits.max_bytes_per_node - state.bytes),
            "refused": dict(state.refused),
        }
