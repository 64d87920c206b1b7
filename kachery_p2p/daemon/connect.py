"""The connector: carries out the connect policy (``peering.policy``) on the node's one socket.

It dials bootstrap peers (forever, with backoff), LAN peers, and peers found through a relay
(a relayed QUIC connection plus a hole punch coordinated by the relay). It gets the narrow things it
needs: the endpoint (to open connections), a session factory, ``register`` for new sessions, the
peer table, the hole puncher, our candidate addresses and a task supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import HostPort
from ..errors import RemoteProtocolError
from ..peering.policy import DIAL_TIMEOUT, Backoff, ConnectPolicy, ConnectViaRelay, DialLan
from ..quic import messages
from ..quic.identity import short_node_id
from .endpoint import Link, LinkClosed, QuicEndpoint
from .paths import PeerPath, relay_stable_address
from .peers import PeerTable
from .punch import PunchManager
from .rendezvous import RelayClient
from .session import PeerSession
from .tasks import Supervisor
from .udp import resolve

log = logging.getLogger("kachery_p2p.connect")

NewSession = Callable[[Link, "str | None"], PeerSession]
ATTEMPT_ERRORS = (RemoteProtocolError, LinkClosed, OSError, asyncio.TimeoutError)


class Connector:
    def __init__(
        self,
        endpoint: QuicEndpoint,
        new_session: NewSession,
        register: Callable[[PeerSession], None],
        peers: PeerTable,
        punch: PunchManager,
        candidates: Callable[[], list[str]],
        tasks: Supervisor,
        policy: ConnectPolicy,
    ) -> None:
        self.endpoint = endpoint
        self.new_session = new_session
        self.register = register
        self.peers = peers
        self.punch = punch
        self.candidates = candidates
        self.tasks = tasks
        self.policy = policy
        self._via: dict[str, RelayClient] = {}
        # After a failed punch, with the relayed session up: birthday probing (daemon.birthday), if enabled.
        self.birthday: Callable[[PeerSession, str], Awaitable[bool]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        peers.connecting = policy.connecting  # one set: attempts under way, waiting step-ins included
        peers.listeners.append(self._session_changed)

    # -- the policy pump ---------------------------------------------------------------------------
    def _session_changed(self, node_id: str, best: PeerSession | None) -> None:
        self.policy.session_changed(node_id, None if best is None else best.link.path.kind)

    def relay_peer_seen(self, client: RelayClient, node_id: str) -> None:
        self._via[node_id] = client
        self.policy.relay_peer_seen(node_id, time.monotonic())
        self._pump()

    def lan_peer_seen(self, node_id: str, ip: str, port: int) -> None:
        self.policy.lan_peer_seen(node_id, ip, port, time.monotonic())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.policy.handle_timer(time.monotonic())
        self._pump()

    def _pump(self) -> None:
        while (decision := self.policy.next_event()) is not None:
            if isinstance(decision, DialLan):
                self.tasks.spawn(self._attempt(decision.node_id, self._dial_lan(decision)))
            else:
                self.tasks.spawn(self._attempt(decision.node_id, self._connect_via_relay(decision)))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.policy.get_timer()
        if at is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._on_timer)

    async def _attempt(self, node_id: str, work: Any) -> None:
        try:
            await work
        finally:
            self.policy.attempt_done(node_id, time.monotonic())
            self._pump()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- dialing -------------------------------------------------------------------------------------
    async def dial(self, host: str, port: int, expected_node_id: str | None = None) -> PeerSession:
        address = await resolve(host, port, getattr(self.endpoint.transport, "dual_stack", False))
        link = self.endpoint.connect(address)
        session = self.new_session(link, expected_node_id)
        await session.authenticate(DIAL_TIMEOUT)
        self.register(session)
        return session

    async def keep_dialing(self, address: HostPort) -> None:
        """Stay connected to a bootstrap peer (a relay) for as long as the node runs."""
        backoff = Backoff()
        while True:
            try:
                session = await self.dial(address.host, address.port, address.node_id)
                backoff.succeeded()
                await asyncio.shield(session.link.closed)
                delay = backoff.first
            except (RemoteProtocolError, LinkClosed, OSError) as exc:
                delay = backoff.failed()
                # Said loudly once, then quietly while retrying.
                log.log(logging.WARNING if backoff.first_failure else logging.INFO,
                        "could not connect to %s: %s", address, exc)
            await asyncio.sleep(delay)

    async def _dial_lan(self, decision: DialLan) -> None:
        try:
            await self.dial(decision.ip, decision.port, decision.node_id)
        except ATTEMPT_ERRORS as exc:
            log.info("could not connect to LAN peer %s at %s:%d: %s",
                     short_node_id(decision.node_id), decision.ip, decision.port, exc)

    async def _connect_via_relay(self, decision: ConnectViaRelay) -> None:
        client = self._via.get(decision.node_id)
        if client is None or client.session.link.is_closed:
            return
        node_id = decision.node_id
        current = self.peers.session_for(node_id)
        if not decision.relayed and current is not None and current.link.path.kind == "direct":
            return  # a punch retry for a connection that is direct by now
        relayed = asyncio.ensure_future(self.dial_relayed(client, node_id)) if decision.relayed else None
        try:
            if decision.punch:
                await self.punch_and_dial(client, node_id, relayed_under_way=relayed is not None)
        except ATTEMPT_ERRORS as exc:
            log.info("direct connection to %s failed: %s", short_node_id(node_id), exc)
        if relayed is not None:
            try:
                await relayed
            except ATTEMPT_ERRORS as exc:
                log.info("relayed connection to %s failed: %s", short_node_id(node_id), exc)
        session = self.peers.session_for(node_id)
        if decision.punch and self.birthday is not None and session is not None and session.link.path.kind == "relayed":
            await self.birthday(session, node_id)

    async def dial_relayed(self, client: RelayClient, node_id: str) -> PeerSession:
        self.endpoint.relays.add(client.relay_addr)
        path = PeerPath(client.relay_addr, node_id, self.endpoint.frame_tokens)
        link = self.endpoint.connect(relay_stable_address(client.relay_addr, node_id), path)
        session = self.new_session(link, node_id)
        await session.authenticate()
        self.register(session)
        return session

    async def punch_and_dial(
        self, client: RelayClient, node_id: str, relayed_under_way: bool = False
    ) -> PeerSession | None:
        token = PunchManager.new_token()
        reply, _ = await client.session.request(
            {"op": "connect", "target": node_id, "token": token, "candidates": self.candidates()[:8]},
            timeout=10,
        )
        theirs = list(messages.parse_candidates(messages.check_ok(reply).get("candidates", [])))
        result = await self.punch.punch(token, node_id, theirs)
        if result.address is None:
            log.info("hole punch to %s failed; staying relayed", short_node_id(node_id))
            return None
        if result.confirmed and (self.endpoint.has_peer_path(node_id) or relayed_under_way):
            # The relayed connection moves onto the direct path: no new handshake, streams go on.
            self.endpoint.direct_found(node_id, result.address)
            return None
        return await self.dial(result.address[0], result.address[1], node_id)

    def answer_punch(self, request: messages.Punch) -> dict[str, Any]:
        """A relay asks us to punch towards a peer that wants to connect."""
        # Probing starts now, before we answer: the initiator starts when our answer reaches it.
        self.tasks.spawn(self._answer_punch(request))
        return {"ok": True, "candidates": self.candidates()[:8]}

    async def _answer_punch(self, request: messages.Punch) -> None:
        result = await self.punch.punch(request.token, request.source, list(request.candidates))
        if result.address is not None and result.confirmed:
            self.endpoint.direct_found(request.source, result.address)
