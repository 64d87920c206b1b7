"""Relay mode: STUN answers, channel rendezvous, punch coordination and forwarding of relay frames.

What the relay forwards is the nodes' own QUIC packets, end-to-end encrypted between the two nodes;
it learns who talks to whom and how much, never what. Limits (``relay.limits``) bound what each node
may use; what goes over them is dropped and counted, never a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import RemoteProtocolError
from ..ids import format_address
from ..nat import stun
from ..quic import messages
from ..relay.frames import DatagramKind, decode_relay_frame, encode_from_relay
from ..relay.limits import ForwardingPolicy, RelayLimits
from ..relay.registry import Registry
from .endpoint import Address

if TYPE_CHECKING:
    from .network import PeerNetwork
    from .session import PeerSession

log = logging.getLogger("kachery_p2p.relay")

PUNCH_REQUEST_TIMEOUT = 5.0


class RelayService:
    def __init__(self, network: PeerNetwork, limits: RelayLimits) -> None:
        self.network = network
        self.limits = limits
        self.registry = Registry(max_nodes=limits.max_registrations)
        self.policy = ForwardingPolicy(limits)
        self._node_by_addr: dict[Address, str] = {}
        self._addr_by_node: dict[str, Address] = {}
        self.stats = {"stun": 0, "forwarded": 0, "forwarded_bytes": 0, "dropped": 0}

    # -- sessions ----------------------------------------------------------------------------------
    def session_registered(self, session: PeerSession) -> None:
        if session.link.path.kind != "direct" or session.node_id is None:
            return
        addr = session.link.path.addr
        old = self._addr_by_node.get(session.node_id)
        if old is not None:
            self._node_by_addr.pop(old, None)
        self._node_by_addr[addr] = session.node_id
        self._addr_by_node[session.node_id] = addr

    def session_closed(self, session: PeerSession) -> None:
        if session.node_id is None or self.network.session_for(session.node_id) is not None:
            return
        addr = self._addr_by_node.pop(session.node_id, None)
        if addr is not None:
            self._node_by_addr.pop(addr, None)
        self.registry.remove(session.node_id)
        self.policy.end_session(session.node_id)

    # -- requests over sessions --------------------------------------------------------------------
    async def handle(self, session: PeerSession, request: messages.Request) -> tuple[dict[str, Any], None]:
        assert session.node_id is not None
        now = time.time()
        observed = session.link.path.addr
        if isinstance(request, messages.Publish):
            self.registry.publish(request.record, observed, session.node_id, now)
            return {"ok": True, "observed": format_address(observed)}, None
        if isinstance(request, messages.Lookup):
            self.registry.expire(now)
            peers = self.registry.lookup(list(request.rendezvous_ids), session.node_id, now)
            return {"ok": True, "peers": peers}, None
        if isinstance(request, messages.Connect):
            target = self.network.session_for(request.target)
            target_addr = self._addr_by_node.get(request.target)
            if target is None or target_addr is None:
                raise RemoteProtocolError("that node is not connected to this relay", code="not_found")
            candidates = [*request.candidates, format_address(observed)]
            reply, _ = await target.request(
                {"op": "punch", "source": session.node_id, "token": request.token,
                 "candidates": candidates[: messages.MAX_CANDIDATES]},
                timeout=PUNCH_REQUEST_TIMEOUT,
            )
            theirs = list(messages.parse_candidates(messages.check_ok(reply).get("candidates", [])))
            theirs.append(format_address(target_addr))
            return {"ok": True, "candidates": theirs[: messages.MAX_CANDIDATES]}, None
        raise RemoteProtocolError("a relay serves no files", code="not_authorized")

    # -- datagrams on the shared socket ------------------------------------------------------------
    def datagram_received(self, kind: DatagramKind, data: bytes, addr: Address) -> None:
        transport = self.network.endpoint.transport
        if transport is None:
            return
        if kind == "stun":
            answer = stun.binding_answer(data, addr)  # Binding requests of sane size only
            if answer is not None:
                self.stats["stun"] += 1
                transport.sendto(answer, addr)
        elif kind == "relay":
            self._forward(data, addr, transport)

    def _forward(self, data: bytes, addr: Address, transport: asyncio.DatagramTransport) -> None:
        source = self._node_by_addr.get(addr)
        if source is None:
            self.stats["dropped"] += 1
            return
        try:
            frame = decode_relay_frame(data)
        except ValueError:
            self.stats["dropped"] += 1
            return
        target_addr = self._addr_by_node.get(frame.node_id)
        if frame.kind != "to_relay" or target_addr is None:
            self.stats["dropped"] += 1
            return
        allowed, reason = self.policy.decide(source, frame.node_id, len(frame.payload), time.monotonic())
        if not allowed:
            self.stats["dropped"] += 1
            key = f"refused: {reason}"
            self.stats[key] = self.stats.get(key, 0) + 1
            return
        transport.sendto(encode_from_relay(source, frame.payload), target_addr)
        self.stats["forwarded"] += 1
        self.stats["forwarded_bytes"] += len(frame.payload)

    def info(self) -> dict[str, Any]:
        return {"relay": {**self.stats, "registered": len(self._addr_by_node)}}
