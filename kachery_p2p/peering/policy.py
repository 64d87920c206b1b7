"""The connect policy: who dials whom, when the other side steps in, retries, keepalives, ranking.

Sans-IO, aioquic-style: feed what was seen (``relay_peer_seen``, ``lan_peer_seen``, ``attempt_done``)
with ``now``; take decisions from ``next_event()``; ask ``get_timer()`` when to call
``handle_timer(now)`` next. The daemon's connector (``daemon/connect.py``) carries the decisions out.

Rules:

- Two nodes that find each other would both dial; the node with the SMALLER node id dials. The other
  steps in itself only if no session exists after a short delay (it may have seen the peer first):
  RELAY_STEP_IN_AFTER for peers seen through a relay (lookups run every few seconds),
  LAN_STEP_IN_AFTER for LAN announcements.
- A peer seen through a relay gets a relayed connection at once (the first byte does not wait for a
  hole punch) and, with hole punching on, a punch; while a session with it exists the policy asks
  for another punch every RETRY_DIRECT_SEC (the connector skips it when the connection is direct by
  then), so a connection that fell back to the relay goes direct again when it can.
- At most one attempt per peer runs at a time (``connecting``).
- Sessions are ranked direct before relayed; then both sides prefer the one dialed by the smaller id.
- Bootstrap peers (relays) are dialed forever with exponential backoff (``Backoff``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from .path import PathKind

RELAY_STEP_IN_AFTER = 0.5
LAN_STEP_IN_AFTER = 2.0
RETRY_DIRECT_SEC = 60.0
KEEPALIVE_INTERVAL = 15.0
UNUSED_SESSION_GRACE = 30.0
DIAL_TIMEOUT = 10.0
FIRST_RETRY = 1.0
MAX_RETRY = 30.0



@dataclass(frozen=True)
class ConnectViaRelay:
    """Connect to ``node_id`` found through a relay: ``relayed`` (a relayed QUIC connection, when we
    have no session yet) and/or ``punch`` (a hole punch, to move to a direct path)."""

    node_id: str
    relayed: bool
    punch: bool


@dataclass(frozen=True)
class DialLan:
    """Dial ``node_id`` directly at ``ip``:``port`` (it announced itself on the LAN)."""

    node_id: str
    ip: str
    port: int


Decision = ConnectViaRelay | DialLan


def dials_first(my_node_id: str, peer_node_id: str) -> bool:
    """Of two nodes that find each other, the one with the smaller node id dials."""
    return my_node_id < peer_node_id


def session_rank(path: PathKind, we_dialed: bool, my_node_id: str, peer_node_id: str) -> tuple[bool, bool]:
    """Sort key among several sessions with one peer (smallest first): direct before relayed, then the
    session dialed by the smaller node id, which both sides pick alike."""
    return (path != "direct", we_dialed != dials_first(my_node_id, peer_node_id))


def keepalive_due(last_activity: float, now: float, interval: float = KEEPALIVE_INTERVAL) -> bool:
    """A session idle for ``interval`` gets a PING (keeps NAT mappings and the relay's path open)."""
    return now - last_activity > interval


def keep_accepted_session(relay_mode: bool, shares_channel: bool, peer_is_relay: bool, registered: bool) -> bool:
    """Whether a session a peer opened to us is worth keeping after UNUSED_SESSION_GRACE: on a plain node
    only if it shares a channel (or the peer is a relay), on a relay only if the peer registered. Anyone
    can open sessions with fresh keys; unused ones must not pile up (issue 10 #1)."""
    if relay_mode:
        return registered
    return shares_channel or peer_is_relay


class Backoff:
    """Delays between attempts to reach a peer that must stay connected (a relay): 1, 2, 4 ... 30 s,
    back to the first after a success."""

    def __init__(self, first: float = FIRST_RETRY, maximum: float = MAX_RETRY) -> None:
        self.first = first
        self.maximum = maximum
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the delay before the next attempt."""
        delay = min(self.first * 2**self.failures, self.maximum)
        self.failures += 1
        return delay

    @property
    def first_failure(self) -> bool:
        """Whether the last failure was the first in a row (said loudly; retries quietly)."""
        return self.failures == 1


class ConnectPolicy:
    """Decides when to connect to peers found through relays and on the LAN."""

    def __init__(self, my_node_id: str, hole_punching: bool = True, retry_direct: float = RETRY_DIRECT_SEC) -> None:
        self.my_node_id = my_node_id
        self.hole_punching = hole_punching
        self.retry_direct = retry_direct
        self.connecting: set[str] = set()
        self._last_punch: dict[str, float] = {}
        self._timers: list[tuple[float, int, Decision]] = []
        self._seq = 0
        self._events: list[Decision] = []
        self._paths: dict[str, PathKind | None] = {}
        self._started: dict[str, Decision] = {}

    # -- what the node sees --------------------------------------------------------------------
    def session_changed(self, node_id: str, best_path: PathKind | None) -> None:
        """The best session with ``node_id`` now has this path (None: no session)."""
        self._paths[node_id] = best_path
        if best_path is None:
            self._paths.pop(node_id, None)

    def relay_peer_seen(self, node_id: str, now: float) -> None:
        """A channel peer listed by one of our relays."""
        if node_id in self.connecting or node_id == self.my_node_id:
            return
        current = self._paths.get(node_id)
        if not dials_first(self.my_node_id, node_id):
            if current is None:
                self.connecting.add(node_id)
                self._schedule(now + RELAY_STEP_IN_AFTER, ConnectViaRelay(node_id, True, self.hole_punching))
            return
        if current is not None:
            if current == "direct" or not self.hole_punching:
                return
            if now - self._last_punch.get(node_id, -self.retry_direct) < self.retry_direct:
                return
        self._start(ConnectViaRelay(node_id, relayed=current is None, punch=self.hole_punching), now)

    def lan_peer_seen(self, node_id: str, ip: str, port: int, now: float) -> None:
        """A valid LAN announcement of a peer sharing a channel with us."""
        if node_id in self.connecting or node_id == self.my_node_id or self._paths.get(node_id) is not None:
            return
        self.connecting.add(node_id)
        decision = DialLan(node_id, ip, port)
        if dials_first(self.my_node_id, node_id):
            self._events.append(decision)
        else:
            self._schedule(now + LAN_STEP_IN_AFTER, decision)

    def attempt_done(self, node_id: str, now: float) -> None:
        """The attempt a decision started has ended (whatever its outcome)."""
        self.connecting.discard(node_id)
        started = self._started.pop(node_id, None)
        if isinstance(started, ConnectViaRelay) and self.hole_punching:
            self._schedule(now + self.retry_direct, ConnectViaRelay(node_id, relayed=False, punch=True))

    # -- sans-IO plumbing ----------------------------------------------------------------------
    def get_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, decision = heapq.heappop(self._timers)
            node_id = decision.node_id
            connected = node_id in self._paths
            if isinstance(decision, ConnectViaRelay) and not decision.relayed:
                # A punch retry: only for a peer we still have a session with, one attempt at a time.
                if connected and node_id not in self.connecting:
                    self._start(decision, now)
                continue
            # Step in only if the peer has not connected to us meanwhile.
            self.connecting.discard(node_id)
            if not connected:
                self._start(decision, now)

    def next_event(self) -> Decision | None:
        return self._events.pop(0) if self._events else None

    def _schedule(self, at: float, decision: Decision) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, decision))

    def _start(self, decision: Decision, now: float) -> None:
        self.connecting.add(decision.node_id)
        self._started[decision.node_id] = decision
        if isinstance(decision, ConnectViaRelay) and decision.punch:
            self._last_punch[decision.node_id] = now
        self._events.append(decision)
