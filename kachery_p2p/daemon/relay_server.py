"""Relay mode: the pump around ``relay.server.RelayState`` (STUN answers, channel rendezvous, punch
coordination and forwarding of relay frames).

What the relay forwards is the nodes' own QUIC packets, end-to-end encrypted between the two nodes;
it learns who talks to whom and how much, never what. Every decision (who is registered where, until
when, who may reach whom, within which limits) is the sans-IO ``RelayState``'s; what goes over the
limits is dropped and counted, never a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import RemoteProtocolError
from ..nat import stun
from ..quic import messages
from ..relay.frames import DatagramKind
from ..relay.limits import RelayLimits
from ..relay.server import RelayState
from .endpoint import Address
from .session import PeerSession

log = logging.getLogger("kachery_p2p.relay")

PUNCH_REQUEST_TIMEOUT = 5.0
Send = Callable[[bytes, Address], None]


class RelayService:
    def __init__(self, limits: RelayLimits, send: Send, session_for: Callable[[str], PeerSession | None]) -> None:
        self.state = RelayState(limits)
        self.send = send
        self.session_for = session_for
        self.stun_answers = 0
        self._timer: asyncio.TimerHandle | None = None

    # -- sessions ----------------------------------------------------------------------------------
    def session_closed(self, session: PeerSession) -> None:
        if session.node_id is not None and session.link.path.kind == "direct":
            self.state.session_ended(session.node_id, session.link.path.addr)

    # -- requests over sessions --------------------------------------------------------------------
    async def handle(self, session: PeerSession, request: messages.Request) -> tuple[dict[str, Any], None]:
        assert session.node_id is not None
        now = time.time()
        observed = session.link.path.addr
        if isinstance(request, messages.Publish):
            if session.link.path.kind != "direct":
                raise RemoteProtocolError("publish over a direct session", code="bad_request")
            text = self.state.publish(request.record, observed, session.node_id, now)
            self._arm_timer()
            reply: dict[str, Any] = {"ok": True, "observed": text}
            if request.frame_token:
                reply["frameToken"] = self.state.frame_token(session.node_id).hex()
            return reply, None
        if isinstance(request, messages.Lookup):
            peers = self.state.lookup(list(request.rendezvous_ids), session.node_id, now)
            return {"ok": True, "peers": peers}, None
        if isinstance(request, messages.Connect):
            target_addr = self.state.connect_target(session.node_id, request.target, now)
            target = self.session_for(request.target)
            if target is None:
                raise RemoteProtocolError("that node is not connected to this relay", code="not_found")
            candidates = self.state.punch_candidates(session.node_id, request.candidates, observed)
            reply, _ = await target.request(
                {"op": "punch", "source": session.node_id, "token": request.token, "candidates": candidates},
                timeout=PUNCH_REQUEST_TIMEOUT,
            )
            theirs = messages.parse_candidates(messages.check_ok(reply).get("candidates", []))
            return {"ok": True, "candidates": self.state.punch_candidates(request.target, theirs, target_addr)}, None
        raise RemoteProtocolError("a relay serves no files", code="not_authorized")

    # -- datagrams on the shared socket ------------------------------------------------------------
    def datagram_received(self, kind: DatagramKind, data: bytes, addr: Address) -> None:
        if kind == "stun":
            answer = stun.binding_answer(data, addr)  # Binding requests of sane size only
            if answer is not None:
                self.stun_answers += 1
                self.send(answer, addr)
        elif kind == "relay":
            out = self.state.receive_frame(data, addr, time.time())
            if out is not None:
                self.send(*out)

    # -- record expiry -------------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.state.get_timer()
        if at is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.time()) + 0.01, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        gone = self.state.handle_timer(time.time())
        if gone:
            log.info("%d relay registrations expired", len(gone))
        self._arm_timer()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def info(self) -> dict[str, Any]:
        return {"relay": {"stun": self.stun_answers, **self.state.info()}}
