"""One UDP hole-punch attempt, sans-IO: which probes to send when, and which address works.

A probe is ``0x10 | token | sender node id | flag`` (``relay.frames``). Both sides send probes to all
of the other's candidates every PROBE_INTERVAL for ``duration``; whoever receives a probe answers
with an ack to the address it came from (the peer-reflexive address, which is what gets through a
symmetric NAT facing a cone NAT) and adds that address to its targets. The token comes from the
relay's coordination, so stray packets cannot steer a punch.

- The first probe or ack received gives ``first_seen``: the peer can reach us from there.
- An ack gives ``confirmed``: our probe reached the peer AND its answer reached us, so the path
  works both ways; a connection may move onto it.

aioquic-style contract: ``datagrams_to_send(now)``, ``receive_probe(probe, addr, now)``,
``get_timer()`` / ``handle_timer(now)``, ``next_event()``; no sockets, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..relay.frames import Probe, encode_probe

Address = tuple[str, int]

PROBE_INTERVAL = 0.1
PUNCH_DURATION = 4.0
LINGER = 1.0  # keep probing this long after success, so the peer's side opens too
MAX_TARGETS = 16


@dataclass(frozen=True)
class PunchResult:
    """The attempt ended: ``address`` is where the peer answered from (None: it failed);
    ``confirmed`` says an ack came back (the path works both ways)."""

    address: Address | None
    confirmed: bool


class PunchAttempt:
    def __init__(
        self,
        token: bytes,
        my_node_id: str,
        peer_node_id: str,
        targets: list[Address],
        now: float,
        duration: float = PUNCH_DURATION,
        interval: float = PROBE_INTERVAL,
    ) -> None:
        self.token = token
        self.peer_node_id = peer_node_id
        self.targets = list(dict.fromkeys(targets))[:MAX_TARGETS]
        self.interval = interval
        self.deadline = now + duration
        self.stop_probing_at = self.deadline
        self.first_seen: Address | None = None
        self.confirmed: Address | None = None
        self.result: PunchResult | None = None
        self.stats = {"probes_sent": 0, "probes_received": 0, "acks_received": 0}
        self._probe = encode_probe(token, my_node_id, ack=False)
        self._ack = encode_probe(token, my_node_id, ack=True)
        self._next_probe_at = now
        self._acks: list[Address] = []
        self._events: list[PunchResult] = []

    @property
    def probing(self) -> bool:
        return self._next_probe_at <= self.stop_probing_at

    def receive_probe(self, probe: Probe, addr: Address, now: float) -> bool:
        """A probe or ack with this attempt's token; False if it is not from the peer (ignored)."""
        if probe.token != self.token or probe.sender != self.peer_node_id:
            return False
        if probe.ack:
            self.stats["acks_received"] += 1
            if self.confirmed is None:
                self.confirmed = addr
        else:
            self.stats["probes_received"] += 1
            self._acks.append(addr)
            if addr not in self.targets and len(self.targets) < MAX_TARGETS:
                self.targets.append(addr)  # peer-reflexive: answer where it really came from
        if self.first_seen is None:
            self.first_seen = addr
        if self.confirmed is not None and self.result is None:
            self._finish(now)
        return True

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = [(self._ack, addr) for addr in self._acks]
        self._acks.clear()
        if self.probing and now >= self._next_probe_at and now < self.stop_probing_at:
            out.extend((self._probe, target) for target in self.targets)
            self.stats["probes_sent"] += len(self.targets)
            self._next_probe_at = now + self.interval
        return out

    def get_timer(self) -> float | None:
        if self.result is None:
            return min(self._next_probe_at, self.deadline) if self.probing else self.deadline
        return self._next_probe_at if self.probing else None

    def handle_timer(self, now: float) -> None:
        if self.result is None and now >= self.deadline:
            self._finish(now)

    def next_event(self) -> PunchResult | None:
        return self._events.pop(0) if self._events else None

    def finished(self, now: float) -> bool:
        """Nothing more to decide, and the peer's probing is over too (the owner may forget us)."""
        return self.result is not None and now > self.deadline + LINGER

    def _finish(self, now: float) -> None:
        address = self.confirmed or self.first_seen
        self.result = PunchResult(address, self.confirmed is not None)
        self._events.append(self.result)
        if address is None:
            self._next_probe_at = math.inf  # nothing answered: stop probing now
        else:
            self.stop_probing_at = min(self.stop_probing_at, now + LINGER)
