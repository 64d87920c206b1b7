"""A node's side of a relay: publish where we are, look up channel peers, and connect to them.

Connecting to a peer found through a relay starts two things at once: a QUIC connection relayed
through the relay (so the first byte does not wait for punching) and a hole punch coordinated by the
relay. When the punch works we dial the peer directly; new requests then prefer the direct session
(``PeerNetwork.session_for``) and the relayed one is closed once idle. A peer that stays relayed is
punched again every RETRY_DIRECT_SEC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ..channels.rendezvous import decode_record, encode_record
from ..errors import LocalProtocolError, RemoteProtocolError
from ..quic import messages
from ..quic.identity import short_node_id
from .endpoint import LinkClosed
from .paths import RelayPath, relay_stable_address
from .punch import PunchManager

if TYPE_CHECKING:
    from .network import PeerNetwork
    from .session import PeerSession

log = logging.getLogger("kachery_p2p.rendezvous")

PUBLISH_INTERVAL = 60.0
RECORD_LIFETIME = 180.0
LOOKUP_INTERVAL = 10.0
RETRY_DIRECT_SEC = 60.0


class RelayClient:
    """Runs while our session with one relay is up."""

    def __init__(self, network: PeerNetwork, session: PeerSession) -> None:
        self.network = network
        self.session = session
        self.relay_addr = session.link.path.addr
        self.observed: str | None = None
        self._wake = asyncio.Event()

    def trigger(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        reflexive = await self.network.stun.query(self.relay_addr)
        log.info("relay %s sees us at %s (STUN)", self.session.link.path.describe(), reflexive)
        last_publish = 0.0
        while not self.session.link.is_closed:
            try:
                now = time.monotonic()
                if now - last_publish > PUBLISH_INTERVAL or self._wake.is_set():
                    await self.publish()
                    last_publish = now
                self._wake.clear()
                await self.lookup()
            except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, LocalProtocolError) as exc:
                log.info("rendezvous with relay %s failed: %s", self.session.link.path.describe(), exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOOKUP_INTERVAL)

    async def publish(self) -> None:
        ids = self.network.rendezvous_ids()[:64]
        record = encode_record(
            self.network.identity,
            self.network.config.label,
            ids,
            self.network.candidates()[:8],
            time.time(),
            RECORD_LIFETIME,
        )
        reply, _ = await self.session.request({"op": "publish", "record": record}, timeout=10)
        observed = messages.check_ok(reply).get("observed")
        if isinstance(observed, str):
            self.observed = observed

    async def lookup(self) -> None:
        ids = self.network.rendezvous_ids()
        if not ids:
            return
        reply, _ = await self.session.request({"op": "lookup", "rendezvousIds": ids}, timeout=10)
        peers = messages.check_ok(reply).get("peers", [])
        if not isinstance(peers, list):
            return
        now = time.time()
        for entry in peers[:64]:
            try:
                record = decode_record(entry["record"], now)
            except (RemoteProtocolError, KeyError, TypeError):
                continue  # a record we cannot verify is ignored: the relay cannot forge peers
            node_id = record.node_id
            if node_id == self.network.identity.node_id:
                continue
            self.network.consider_relay_peer(self, node_id)

    # -- connecting ----------------------------------------------------------------------------------
    async def dial_relayed(self, node_id: str) -> PeerSession:
        self.network.endpoint.relays.add(self.relay_addr)
        link = self.network.endpoint.connect(
            relay_stable_address(self.relay_addr, node_id), RelayPath(self.relay_addr, node_id)
        )
        session = self.network.new_session(link, node_id)
        await session.authenticate()
        self.network.register(session)
        return session

    async def punch_and_dial(self, node_id: str) -> PeerSession | None:
        punch: PunchManager = self.network.punch
        token = PunchManager.new_token()
        reply, _ = await self.session.request(
            {"op": "connect", "target": node_id, "token": token, "candidates": self.network.candidates()[:8]},
            timeout=10,
        )
        theirs = list(messages.parse_candidates(messages.check_ok(reply).get("candidates", [])))
        addr = await punch.punch(token, node_id, theirs)
        if addr is None:
            log.info("hole punch to %s failed; staying relayed", short_node_id(node_id))
            return None
        return await self.network.dial(addr[0], addr[1], node_id)

    async def answer_punch(self, request: messages.Punch) -> dict[str, Any]:
        # Probing starts now, before we answer: the initiator starts when our answer reaches it.
        self.network.spawn(self.network.punch.punch(request.token, request.source, list(request.candidates)))
        return {"ok": True, "candidates": self.network.candidates()[:8]}

