"""Hole punching on the node's one socket: the pump around ``nat.punch.PunchAttempt``.

It sends each attempt's probes and acks from the shared UDP socket, routes received probes to their
attempt by token, and arms one timer per attempt. The decisions (what to send when, which address
works) are the sans-IO attempt's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from ..channels import rendezvous
from ..nat.punch import PUNCH_DURATION, PunchAttempt, PunchResult
from ..relay.frames import Probe, decode_probe
from .endpoint import Address, QuicEndpoint

log = logging.getLogger("kachery_p2p.punch")


def parse_candidate(text: str) -> Address | None:
    """A candidate address from a peer or relay, or None when it is not a usable unicast address."""
    try:
        return rendezvous.parse_candidate(text)
    except ValueError:
        return None


class PunchManager:
    def __init__(self, endpoint: QuicEndpoint, node_id: str) -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self._attempts: dict[bytes, tuple[PunchAttempt, asyncio.Future[PunchResult]]] = {}
        self._timers: dict[bytes, asyncio.TimerHandle] = {}
        self.stats = {"probes_sent": 0, "probes_received": 0, "acks_received": 0, "ignored": 0}
        self.other_probe: Callable[[Probe, Address], bool] | None = None  # probes of other attempts (birthday)

    @staticmethod
    def new_token() -> str:
        return os.urandom(16).hex()

    async def punch(
        self, token_hex: str, peer_node_id: str, candidates: list[str], duration: float = PUNCH_DURATION
    ) -> PunchResult:
        """Probe the candidates until the peer answers both ways or ``duration`` passes."""
        token = bytes.fromhex(token_hex)
        targets = [a for a in (parse_candidate(c) for c in candidates) if a is not None]
        attempt = PunchAttempt(token, self.node_id, peer_node_id, targets, time.monotonic(), duration)
        future: asyncio.Future[PunchResult] = asyncio.get_running_loop().create_future()
        self._attempts[token] = (attempt, future)
        self._pump(token)
        return await asyncio.shield(future)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            probe = decode_probe(data)
        except ValueError:
            self.stats["ignored"] += 1
            return
        entry = self._attempts.get(probe.token)
        if entry is None and self.other_probe is not None and self.other_probe(probe, addr):
            return
        if entry is None or not entry[0].receive_probe(probe, addr, time.monotonic()):
            self.stats["ignored"] += 1
            return
        self.stats["acks_received" if probe.ack else "probes_received"] += 1
        self._pump(probe.token)

    def _on_timer(self, token: bytes) -> None:
        self._timers.pop(token, None)
        entry = self._attempts.get(token)
        if entry is not None:
            entry[0].handle_timer(time.monotonic())
            self._pump(token)

    def _pump(self, token: bytes) -> None:
        attempt, future = self._attempts[token]
        now = time.monotonic()
        transport = self.endpoint.transport
        for data, addr in attempt.datagrams_to_send(now):
            if transport is not None:
                transport.sendto(data, addr)
                if data[-1] == 0:
                    self.stats["probes_sent"] += 1
        while (result := attempt.next_event()) is not None:
            if not future.done():
                future.set_result(result)
        timer = self._timers.pop(token, None)
        if timer is not None:
            timer.cancel()
        if attempt.finished(now):
            del self._attempts[token]
            return
        at = attempt.get_timer()
        if at is None:
            at = attempt.deadline + 1.5  # keep answering the peer's probes a while, then forget
        self._timers[token] = asyncio.get_running_loop().call_later(max(0.0, at - now), self._on_timer, token)

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
