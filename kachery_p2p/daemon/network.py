"""The peer network's composition root: builds the components and wires each to the narrow things it
needs. This is the only module that imports the others; none of them gets "the whole network".

    QuicEndpoint (one UDP socket, one demux)      PeerTable (sessions by node id)
    ├─ QUIC links -> PeerSession (auth, requests) ├─ Connector (peering.policy: who dials, when)
    ├─ probes     -> PunchManager (hole punching) ├─ RelayClient per relay (publish, lookup)
    ├─ STUN       -> StunClient / RelayService     ├─ RelayService (relay mode: rendezvous, forwarding)
    └─ relay frames -> links / RelayService        └─ FileServer, Transfers (files over sessions)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from kachery_p2p.daemon.deadline import within

from ..channels.announcements import Announcement
from ..channels.membership import rendezvous_id
from ..config import DaemonConfig
from ..errors import ConfigError, RemoteProtocolError
from ..ids import FileUri
from ..nat.report import classify
from ..peering.policy import RETRY_DIRECT_SEC, UNUSED_SESSION_GRACE, ConnectPolicy, keep_accepted_session, keepalive_due
from ..quic import messages
from ..quic.identity import NodeIdentity, short_node_id
from ..relay.frames import DatagramKind
from ..store import ContentStore
from .birthday import BirthdayManager
from .candidates import gather as gather_candidates
from .connect import Connector
from .endpoint import Link, LinkClosed, QuicEndpoint
from .lan import LanDiscovery, default_lan_interfaces
from .paths import PeerPath
from .peers import PeerTable
from .portmap import PortMapping
from .punch import PunchManager
from .relay_server import RelayService
from .relay_tcp import RelayTcpServer, TcpFallback, relay_over_tcp
from .rendezvous import RelayClient
from .serve import FileServer
from .session import PeerSession
from .stun_client import StunClient
from .sysnet import ipv6_addresses
from .tasks import Supervisor
from .transfers import Transfers
from .udp import UdpTransport

log = logging.getLogger("kachery_p2p.network")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
KEEPALIVE_CHECK = 5.0


class PeerNetwork:
    def __init__(
        self, config: DaemonConfig, identity: NodeIdentity, store: ContentStore, channels: Callable[[], list[str]]
    ) -> None:
        self.config = config
        self.identity = identity
        self.channels = channels
        self.tasks = Supervisor()
        self.endpoint = QuicEndpoint(identity, on_incoming=self._on_incoming, on_other_datagram=self._on_datagram,
                                     max_links=links_allowed(config))
        self.peers = PeerTable(identity.node_id)
        self.server = FileServer(store)
        self.punch = PunchManager(self.endpoint, identity.node_id)
        self.stun = StunClient(self.endpoint)
        self.relay = (
            RelayService(config.relay_limits, self._send, self.peers.session_for) if config.relay_mode else None
        )
        self.connector = Connector(
            self.endpoint, self.new_session, self.register, self.peers, self.punch, self.candidates, self.tasks,
            ConnectPolicy(identity.node_id, config.hole_punching, _retry_direct_sec()),
        )
        self.birthday = BirthdayManager(self.endpoint, identity.node_id, self._mapping, self._public_ipv4,
                                        config.udp_host)
        if config.hole_punching and config.birthday_probing and not config.relay_mode:
            self.punch.other_probe = self.birthday.probe_received
            self.connector.birthday = self.birthday.ask
        self.relay_clients: dict[str, RelayClient] = {}
        self.transfers = Transfers(store, self.peers)
        self.server.on_range = self.transfers.activity.count_upload
        self.local_address: tuple[str, int] | None = None
        self.lan: LanDiscovery | None = None
        self.port_mapping: PortMapping | None = None
        self.relay_tcp: RelayTcpServer | None = None
        self.tcp_fallbacks: list[TcpFallback] = []
        # Handlers of further request types (feeds), by message class: registered by their services.
        self.request_handlers: dict[type, Callable[[PeerSession, Any], Awaitable[Any]]] = {}
        if self.connector.birthday is not None:
            self.request_handlers[messages.Birthday] = self.birthday.handle

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.local_address = await self.endpoint.open(self.config.udp_host, self.config.udp_port)
        if len(self.config.udp_binds) > 1:
            self._restrict_binds()
        log.info("QUIC on udp %s:%d", *self.local_address)
        if self.config.port_mapping and not self.config.relay_mode:
            self.port_mapping = PortMapping(self.local_address[1], on_change=lambda _a: self.channels_changed())
            self.tasks.spawn(self.port_mapping.run(), "port mapping")
        self.relay_tcp, self.tcp_fallbacks = await relay_over_tcp(
            self.endpoint.transport, self.config, self.identity, self.local_address[1], self._close_sessions_at)
        for address in self.config.bootstrap:
            self.tasks.keep_running(functools.partial(self.connector.keep_dialing, address), f"dial {address}")
        for fallback in self.tcp_fallbacks:
            self.tasks.keep_running(fallback.run, f"relay over TCP {fallback.host}")
        if self.config.lan_discovery and not self.config.relay_mode:
            self.lan = LanDiscovery(
                self.identity,
                label=self.config.label,
                quic_port=lambda: self.local_address[1] if self.local_address else 0,
                rendezvous_ids=self.rendezvous_ids,
                on_announcement=self._on_announcement,
                group=self.config.multicast_group,
                port=self.config.multicast_port,
                interfaces=self.config.lan_interfaces,
            )
            await self.lan.start()
        self.tasks.keep_running(self._keepalive, "keepalive")

    async def stop(self) -> None:
        self.tasks.cancel_all()
        self.connector.stop()
        self.punch.stop()
        self.birthday.stop()
        if self.relay is not None:
            self.relay.stop()
        if self.relay_tcp is not None:
            await self.relay_tcp.stop()
        if self.port_mapping is not None:
            await self.port_mapping.stop()
        if self.lan is not None:
            await self.lan.stop()
        for session in self.peers.all_sessions():
            session.close("node shutting down")
        # Let the CONNECTION_CLOSE frames leave before the socket goes.
        await asyncio.sleep(0)
        self.endpoint.close()

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.endpoint.transport is not None:
            self.endpoint.transport.sendto(data, addr)

    # -- sessions ---------------------------------------------------------------------------------
    def new_session(self, link: Link, expected: str | None = None) -> PeerSession:
        return PeerSession(
            link,
            self.identity,
            self.config.label,
            self.channels,
            self._handle,
            expected_node_id=expected,
            roles=("relay",) if self.config.relay_mode else (),
        )

    async def _handle(
        self, session: PeerSession, request: messages.Request
    ) -> tuple[dict[str, Any], AsyncIterator[bytes] | None]:
        extra = self.request_handlers.get(type(request))
        if extra is not None:
            return await extra(session, request)
        if isinstance(request, (messages.Publish, messages.Lookup, messages.Connect)):
            if self.relay is None:
                raise RemoteProtocolError("this node is not a relay", code="bad_request")
            return await self.relay.handle(session, request)
        if isinstance(request, messages.Punch):
            client = self.relay_clients.get(session.node_id or "")
            if client is None or client.session is not session:
                raise RemoteProtocolError("punch requests come from our relays only", code="not_authorized")
            return self.connector.answer_punch(request), None
        return await self.server.handle(session, request)

    def _on_datagram(self, kind: DatagramKind, data: bytes, addr: tuple[str, int]) -> None:
        if kind == "probe":
            self.punch.datagram_received(data, addr)
        elif self.relay is not None:
            self.relay.datagram_received(kind, data, addr)
        elif kind == "stun":
            self.stun.datagram_received(data, addr)

    def _on_incoming(self, link: Link) -> None:
        self.tasks.spawn(self._admit(self.new_session(link)))

    async def _admit(self, session: PeerSession) -> None:
        try:
            await session.authenticate()
        except (RemoteProtocolError, LinkClosed) as exc:
            log.info("refused a connection from %s: %s", session.link.path.describe(), exc)
            return
        self.register(session)

    def register(self, session: PeerSession) -> None:
        assert session.node_id is not None
        self.endpoint.established(session.link)
        self.peers.add(session)
        log.info(
            "connected to %s (%s) at %s, shared channels: %s",
            short_node_id(session.node_id), session.label, session.link.path.describe(), session.shared_channels,
        )
        self.tasks.spawn(self._watch(session))
        if not session.link.is_client:
            self.tasks.spawn(self._close_if_unused(session))
        if "relay" in session.peer_roles and self.relay is None and session.link.path.kind == "direct":
            client = RelayClient(
                session, self.identity, self.config.label, self.rendezvous_ids, self.candidates, self.stun.query,
                self.connector.relay_peer_seen, self.endpoint.frame_tokens,
            )
            self.relay_clients[session.node_id] = client
            self.endpoint.relays.add(session.link.path.addr)
            self.tasks.keep_running(
                client.run, f"rendezvous with {session.link.path.describe()}", lambda: not session.link.is_closed
            )

    async def _watch(self, session: PeerSession) -> None:
        # Shielded: cancelling this task at stop must not cancel the link's own future (Link.close
        # would then think the connection closed and send no CONNECTION_CLOSE; issue 10 #11).
        reason = await asyncio.shield(session.link.closed)
        assert session.node_id is not None
        client = self.relay_clients.get(session.node_id)
        if client is not None and client.session is session:
            del self.relay_clients[session.node_id]
        self.peers.remove(session)
        if self.relay is not None:
            self.relay.session_closed(session)
        log.info("disconnected from %s: %s", short_node_id(session.node_id), reason)

    async def _close_if_unused(self, session: PeerSession) -> None:
        # Ends as soon as the link closes: a task sleeping the grace out would keep the closed session, its
        # link and every stream buffer of it alive (a stalled reader's 20 MB each; issue 10 #4).
        with contextlib.suppress(asyncio.TimeoutError):
            await within(asyncio.shield(session.link.closed), _unused_grace_sec())
        if session.link.is_closed:
            return
        registered = self.relay is not None and self.relay.state.registry.registered(session.node_id or "")
        if not keep_accepted_session(
            self.relay is not None, bool(session.shared_channels), "relay" in session.peer_roles, registered
        ):
            log.info("closing the unused session from %s", short_node_id(session.node_id or "?" * 64))
            session.close("no shared channel" if self.relay is None else "no registration")

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_CHECK)
            now = time.monotonic()
            for session in self.peers.all_sessions():
                if keepalive_due(session.link.last_activity, now) and not session.link.is_closed:
                    self.tasks.spawn(_quiet(session.link.ping()))

    def _restrict_binds(self) -> None:
        transport = self.endpoint.transport
        try:
            if not isinstance(transport, UdpTransport):
                raise OSError("the socket cannot tell addresses apart")
            transport.restrict(self.config.udp_binds)
        except OSError as exc:
            self.endpoint.close()
            raise ConfigError(f"cannot listen on several --bind addresses: {exc}; give one --bind") from None
        log.info("listening only on %s", ", ".join(self.config.udp_binds))

    # -- channels and LAN discovery ------------------------------------------------------------
    def rendezvous_ids(self) -> list[str]:
        return [rendezvous_id(name) for name in self.channels()]

    def candidates(self) -> list[str]:
        """Addresses a peer may reach us at (daemon.candidates.gather says in which order)."""
        return gather_candidates(
            public=self.config.public_address,
            mapped=self.port_mapping.external if self.port_mapping else None,
            observed=[c.observed for c in self.relay_clients.values() if c.observed],
            reflexive=self.stun.reflexive.values(),
            local=self.local_address,
            binds=self.config.udp_binds,
            dual_stack=getattr(self.endpoint.transport, "dual_stack", False),
            lan_ipv4=default_lan_interfaces,
            ipv6=ipv6_addresses,
        )

    def _mapping(self) -> str:
        """Our NAT's mapping behaviour, from STUN against our relays (two relay IPs are needed to know)."""
        return classify(self.local_address, dict(self.stun.reflexive)).value

    def _public_ipv4(self) -> tuple[str, int] | None:
        return next((addr for addr in self.stun.reflexive.values() if ":" not in addr[0]), None)

    async def _close_sessions_at(self, addr: tuple[str, int]) -> None:
        """End our sessions with whoever is at ``addr`` (the dialer reconnects at once, over the new way)."""
        direct = [s for s in self.peers.all_sessions() if not isinstance(s.link.path, PeerPath)]
        for session in [s for s in direct if tuple(s.link.path.addr) == addr]:  # not relayed peers behind it
            session.close("moving to another transport")
        await asyncio.sleep(0.05)  # let the CONNECTION_CLOSE leave on the old transport

    def _on_announcement(self, announcement: Announcement, ip: str) -> None:
        if set(announcement.rendezvous_ids) & set(self.rendezvous_ids()):
            self.connector.lan_peer_seen(announcement.node_id, ip, announcement.quic_port)

    def channels_changed(self) -> None:
        for session in self.peers.all_sessions():
            session.refresh_shared()
            if session.authenticated and not session.link.is_closed:
                self.tasks.spawn(_quiet(session.exchange_channels()))
        if self.lan is not None:
            self.lan.announce_now()
        for client in self.relay_clients.values():
            client.trigger()

    # -- information ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        host, port = self.local_address or ("", 0)
        info: dict[str, Any] = {
            "udpAddress": f"{host}:{port}",
            "udpPort": port,
            "relayMode": self.relay is not None,
            "relays": {node_id: c.observed for node_id, c in self.relay_clients.items()},
            "candidates": self.candidates(),
            "punch": dict(self.punch.stats),
            "birthday": self.birthday.info(),
            "udp": dict(getattr(self.endpoint.transport, "stats", {})),
            "nat": self.stun.report(self.local_address) if self.stun.reflexive else None,
            "connecting": sorted(self.peers.connecting),
            "portMapping": self.port_mapping.info() if self.port_mapping else None,
            "relayTransports": [f.info() for f in self.tcp_fallbacks],
            "bytesServed": self.server.bytes_served,
            "bytesDownloaded": self.transfers.bytes_downloaded,
            "backgroundTaskFailures": self.tasks.failures,
        }
        for part in (self.relay, self.relay_tcp):
            info.update(part.info() if part is not None else {})
        return info

    def peers_info(self) -> list[dict[str, Any]]:
        """The peer table's view, plus the transport under each path: "tcp" where the relay (or the peer) is
        reached over the relay's TLS/TCP transport (relay_tcp.py), else "udp"."""
        routed = getattr(self.endpoint.transport, "routed", lambda _addr: False)
        result = []
        for session in filter(None, map(self.peers.session_for, self.peers.node_ids())):
            path = session.link.path
            via = getattr(path, "relay_addr", path.addr) if path.kind == "relayed" else path.addr
            tcp = routed(tuple(via)) and not self.birthday.carries(tuple(via))
            result.append({**session.info(), "transport": "tcp" if tcp else "udp"})
        return result

    # -- for services that take the network (feeds): the peer table's lookups ---------------------
    def session_for(self, node_id: str) -> PeerSession | None:
        return self.peers.session_for(node_id)

    def channel_peers(self) -> list[PeerSession]:
        return self.peers.channel_peers()

    # -- files: see transfers.py ------------------------------------------------------------------
    def find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self.transfers.find(uri, timeout)

    async def load(self, uri: FileUri, timeout: float | None, progress: Progress) -> Path:
        return await self.transfers.load(uri, timeout, progress)

    async def read_remote_range(
        self, uri: FileUri, start: int, end: int | None, timeout: float | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        return await self.transfers.read_remote_range(uri, start, end, timeout)


def _unused_grace_sec() -> float:
    """KACHERY_P2P_UNUSED_SESSION_SEC (>= 1) shortens UNUSED_SESSION_GRACE in tests."""
    try:
        return max(1.0, float(os.environ.get("KACHERY_P2P_UNUSED_SESSION_SEC", UNUSED_SESSION_GRACE)))
    except ValueError:
        return UNUSED_SESSION_GRACE


def _retry_direct_sec() -> float:
    """How often a relayed peer is punched again; KACHERY_P2P_RETRY_DIRECT_SEC (>= 1) shortens it in tests."""
    try:
        return max(1.0, float(os.environ.get("KACHERY_P2P_RETRY_DIRECT_SEC", RETRY_DIRECT_SEC)))
    except ValueError:
        return RETRY_DIRECT_SEC


async def _quiet(awaitable: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):
        await awaitable


def links_allowed(config: DaemonConfig) -> int:
    """QUIC connections at once: a relay holds one per registered node (--relay-max-nodes) plus room for
    its peers and half-open attempts; a plain node 512."""
    return max(512, config.relay_limits.max_registrations + 256) if config.relay_mode else 512
