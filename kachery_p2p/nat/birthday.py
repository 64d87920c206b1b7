"""Birthday-paradox probing, sans-IO: a direct path between an endpoint-independent ("easy", cone) NAT and an
endpoint-dependent ("hard", symmetric) one, tried only after the plain punch failed (the relayed path carries
the transfer meanwhile).

Why it can work: the hard NAT gives each of our sockets a new random public port towards the easy side; the
easy side cannot know it. So the hard side opens ``HARD_SOCKETS`` extra sockets and sends a probe from each to
the easy side's public address (each gets a mapping the easy side's address may use), while the easy side sends
probes from its one socket to ``EASY_PROBES`` distinct random ports of the hard side's public IP (each opens the
easy NAT's filter for that port). When one easy port equals one hard mapping, probes pass both ways. With 256 x
256 over the 64,512 ports a NAT picks from: 1 - (1 - 256/64512)^256 ~ 64 % (Tailscale's figure).

Ordering: a probe passes a NAT only if the NAT has seen us send to its source first. The easy side sprays once
(``EASY_START`` after the start, at ``EASY_RATE`` probes/s); the hard side probes from every socket in rounds
(``HARD_ROUNDS`` at ``HARD_ROUND_INTERVAL``): the first round's mappings catch easy probes arriving later, the
last round (after the spray) passes the easy NAT for ports the spray opened. Bounded: at most ``HARD_SOCKETS`` x
``HARD_ROUNDS`` probes from the hard side and ``EASY_PROBES`` from the easy side, given up after ``DURATION``.

Probes are the punch's (``relay.frames`` probe: token | sender node id | ack flag); the token was exchanged over
the peers' end-to-end encrypted relayed session, so stray packets cannot steer the attempt. A probe received is
acked from the socket it arrived on and its source becomes a target (probed every ``PROBE_INTERVAL``); an ack
received confirms that (socket, address) pair both ways: the result. The hard side then keeps only that socket.

Contract as ``nat.punch.PunchAttempt``: ``datagrams_to_send(now)`` -> (socket index, data, address) with index
-1 for the node's own socket, ``receive_probe(probe, index, addr, now)``, ``get_timer`` / ``handle_timer``,
``result``; no sockets, no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from ..relay.frames import Probe, encode_probe

Address = tuple[str, int]
Role = Literal["easy", "hard"]
MAIN_SOCKET = -1

HARD_SOCKETS = 256
HARD_RATE = 1000.0  # probes/s from the hard side (one per socket, all to the one easy address)
HARD_ROUNDS = 3
HARD_ROUND_INTERVAL = 1.5
EASY_PROBES = 256
EASY_RATE = 200.0  # probes/s from the easy side, each to another port
EASY_START = 0.3  # let the hard side's first round create its mappings
DURATION = 5.0
PROBE_INTERVAL = 0.1  # to an address that answered, until confirmed (and LINGER after)
LINGER = 1.0
PORTS = (1024, 65535)  # where NATs pick ports (Linux MASQUERADE --random-fully: 1024-65535)
RETRY_AFTER = 300.0  # at most one attempt per peer this often (the plain punch retries every minute)

EASY = "endpoint-independent"
HARD = "endpoint-dependent"


def choose_role(mine: str, theirs: str) -> Role | None:
    """Our role when our mapping is ``mine`` and the peer's ``theirs`` (``nat.report.MappingBehaviour`` values):
    only an endpoint-independent side facing an endpoint-dependent one gains anything (two hard sides would need
    ~65,536 probes each); None otherwise (unknown included: then it is not tried)."""
    if mine == EASY and theirs == HARD:
        return "easy"
    if mine == HARD and theirs == EASY:
        return "hard"
    return None


def success_chance(sockets: int = HARD_SOCKETS, probes: int = EASY_PROBES, ports: int = PORTS[1] - PORTS[0] + 1
                   ) -> float:
    """The chance that some easy probe hits one of the hard side's mappings (ports picked uniformly)."""
    return 1.0 - (1.0 - sockets / ports) ** probes


@dataclass(frozen=True)
class BirthdayResult:
    """``index`` (a hard-side socket, or MAIN_SOCKET) and ``address`` confirmed both ways; None: it failed."""

    index: int
    address: Address | None


class BirthdayAttempt:
    def __init__(self, role: Role, token: bytes, my_node_id: str, peer_node_id: str, peer: Address, now: float,
                 rng: random.Random | None = None, sockets: int = HARD_SOCKETS, probes: int = EASY_PROBES,
                 duration: float = DURATION) -> None:
        """``peer``: the easy side's public address (we are hard), or the hard side's public IP with any port
        (we are easy; that port is skipped, it is the hard NAT's mapping towards someone else)."""
        self.role = role
        self.token = token
        self.peer_node_id = peer_node_id
        self.peer = peer
        self.sockets = sockets if role == "hard" else 0
        self.deadline = now + duration
        self.result: BirthdayResult | None = None
        self.stats = {"probes_sent": 0, "probes_received": 0, "acks_received": 0}
        self._probe = encode_probe(token, my_node_id, ack=False)
        self._ack = self.ack_datagram = encode_probe(token, my_node_id, ack=True)
        self._start = now
        self._acks: list[tuple[int, Address]] = []
        self._answered: dict[tuple[int, Address], float] = {}  # (index, address) that sent us a probe -> next
        self._stop_probing_at = self.deadline
        self._closed: set[int] = set()
        if role == "hard":
            self._spray: list[tuple[float, int, Address]] = [
                (now + r * HARD_ROUND_INTERVAL + i / HARD_RATE, i, peer)
                for r in range(HARD_ROUNDS) for i in range(sockets)]
        else:
            rng = rng or random.Random()
            ports = [p for p in rng.sample(range(PORTS[0], PORTS[1] + 1), probes + 1) if p != peer[1]][:probes]
            self._spray = [(now + EASY_START + i / EASY_RATE, MAIN_SOCKET, (peer[0], port))
                           for i, port in enumerate(ports)]
        self._spray.sort(key=lambda item: item[0])
        self._next = 0  # index into _spray

    # -- input ------------------------------------------------------------------------------------
    def receive_probe(self, probe: Probe, index: int, addr: Address, now: float) -> bool:
        """A probe or ack that arrived on socket ``index`` from ``addr``; False if not this attempt's peer's."""
        if probe.token != self.token or probe.sender != self.peer_node_id or index in self._closed:
            return False
        if addr[0] != self.peer[0]:
            return False  # the right token from another IP: not the peer's NAT
        if probe.ack:
            self.stats["acks_received"] += 1
            if self.result is None:
                self._finish(now, BirthdayResult(index, addr))
        else:
            self.stats["probes_received"] += 1
            self._acks.append((index, addr))
            self._answered.setdefault((index, addr), now)
        return True

    def handle_timer(self, now: float) -> None:
        if self.result is None and now >= self.deadline:
            self._finish(now, BirthdayResult(MAIN_SOCKET, None))
        if self.result is not None and now >= self._stop_probing_at:
            self._answered.clear()  # the linger is over: nothing more to send

    # -- output -----------------------------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[tuple[int, bytes, Address]]:
        out = [(index, self._ack, addr) for index, addr in self._acks if index not in self._closed]
        self._acks.clear()
        if now >= self._stop_probing_at:
            return out
        if self.result is None:
            while self._next < len(self._spray) and self._spray[self._next][0] <= now:
                _at, index, addr = self._spray[self._next]
                self._next += 1
                if index not in self._closed:
                    out.append((index, self._probe, addr))
        for key, at in self._answered.items():
            if at <= now and key[0] not in self._closed:
                out.append((key[0], self._probe, key[1]))
                self._answered[key] = now + PROBE_INTERVAL
        self.stats["probes_sent"] += sum(1 for _i, data, _a in out if data is self._probe)
        return out

    def get_timer(self) -> float | None:
        """When to call ``handle_timer`` and ``datagrams_to_send`` next (None: nothing more to do)."""
        times: list[float] = []
        if self.result is None:
            times.append(self.deadline)
            if self._next < len(self._spray):
                times.append(self._spray[self._next][0])
        elif not self._answered:
            return None
        else:
            times.append(self._stop_probing_at)
        times.extend(at for key, at in self._answered.items() if key[0] not in self._closed)
        return min(times) if times else None

    def finished(self, now: float) -> bool:
        """The result is known and the linger after it is over: the owner may forget this attempt."""
        return self.result is not None and now >= self._stop_probing_at

    def sockets_to_close(self) -> list[int]:
        """Hard side: the sockets no longer needed (all but the winner once there is a result); each once."""
        if self.result is None:
            return []
        keep = self.result.index if self.result.address is not None else None
        closing = [i for i in range(self.sockets) if i != keep and i not in self._closed]
        self._closed.update(closing)
        return closing

    def _finish(self, now: float, result: BirthdayResult) -> None:
        self.result = result
        if result.address is None:
            self._stop_probing_at = now
            self._answered.clear()
        else:  # keep answering and probing on the winning pair a while, so the peer confirms too
            self._stop_probing_at = now + LINGER
            self._answered = {key: at for key, at in self._answered.items() if key == (result.index, result.address)}
            self._answered.setdefault((result.index, result.address), now)
