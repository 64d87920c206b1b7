"""UDP hole punching on the node's one socket: probes to every candidate, at the same moment on both sides.

A probe is ``0x10 | token | sender node id | flag`` (``relay.frames``). Each side sends probes to all
the other's candidates every PROBE_INTERVAL for PUNCH_DURATION; whoever receives a probe answers with
an ack to the address it came from (the peer-reflexive address, which is what gets through a
symmetric NAT facing a cone NAT). The first probe or ack received tells the initiator which address
works; it then dials QUIC there. The token comes from the relay's coordination, so stray packets
cannot steer a punch.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ..channels import rendezvous
from ..relay.frames import decode_probe, encode_probe
from .endpoint import Address, QuicEndpoint

log = logging.getLogger("kachery_p2p.punch")

PROBE_INTERVAL = 0.1
PUNCH_DURATION = 4.0


def parse_candidate(text: str) -> Address | None:
    """A candidate address from a peer or relay, or None when it is not a usable unicast address."""
    try:
        return rendezvous.parse_candidate(text)
    except ValueError:
        return None


class PunchAttempt:
    def __init__(self, token: bytes, peer_node_id: str, targets: list[Address]) -> None:
        self.token = token
        self.peer_node_id = peer_node_id
        self.targets = targets
        loop = asyncio.get_running_loop()
        self.result: asyncio.Future[Address] = loop.create_future()


class PunchManager:
    def __init__(self, endpoint: QuicEndpoint, node_id: str) -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self._attempts: dict[bytes, PunchAttempt] = {}
        self.stats = {"probes_sent": 0, "probes_received": 0, "acks_received": 0, "ignored": 0}

    @staticmethod
    def new_token() -> str:
        return os.urandom(16).hex()

    async def punch(self, token_hex: str, peer_node_id: str, candidates: list[str], duration: float = PUNCH_DURATION
                    ) -> Address | None:
        """Probe the candidates; return the first address the peer answered from, or None."""
        token = bytes.fromhex(token_hex)
        targets = [a for a in (parse_candidate(c) for c in candidates) if a is not None]
        attempt = PunchAttempt(token, peer_node_id, targets)
        self._attempts[token] = attempt
        sender = asyncio.ensure_future(self._send_probes(attempt, duration))
        try:
            return await asyncio.wait_for(asyncio.shield(attempt.result), duration)
        except asyncio.TimeoutError:
            return None
        finally:
            # Keep probing a little after success so the peer's side opens too.
            loop = asyncio.get_running_loop()
            loop.call_later(1.0, sender.cancel)
            loop.call_later(duration + 2.0, self._attempts.pop, token, None)

    async def _send_probes(self, attempt: PunchAttempt, duration: float) -> None:
        probe = encode_probe(attempt.token, self.node_id, ack=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        while loop.time() < deadline:
            transport = self.endpoint.transport
            if transport is None:
                return
            for target in attempt.targets:
                transport.sendto(probe, target)
                self.stats["probes_sent"] += 1
            await asyncio.sleep(PROBE_INTERVAL)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            probe = decode_probe(data)
        except ValueError:
            self.stats["ignored"] += 1
            return
        attempt = self._attempts.get(probe.token)
        if attempt is None or probe.sender != attempt.peer_node_id:
            self.stats["ignored"] += 1
            return
        if probe.ack:
            self.stats["acks_received"] += 1
        else:
            self.stats["probes_received"] += 1
            transport = self.endpoint.transport
            if transport is not None:
                transport.sendto(encode_probe(probe.token, self.node_id, ack=True), addr)
            if addr not in attempt.targets:
                attempt.targets.append(addr)  # peer-reflexive: answer where it really came from
        if not attempt.result.done():
            attempt.result.set_result(addr)
