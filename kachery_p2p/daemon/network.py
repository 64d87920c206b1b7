"""The peer network of a node: the QUIC endpoint, sessions, discovery (bootstrap, LAN) and transfers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..channels.announcements import Announcement
from ..channels.membership import rendezvous_id
from ..config import HostPort
from ..errors import RemoteProtocolError
from ..ids import FileUri, format_address
from ..quic import messages
from ..quic.identity import short_node_id
from ..relay.frames import DatagramKind
from .endpoint import Link, LinkClosed, QuicEndpoint
from .lan import LanDiscovery, default_lan_interfaces
from .portmap import PortMapping
from .punch import PunchManager
from .relay_server import RelayService
from .rendezvous import RETRY_DIRECT_SEC, RelayClient
from .serve import FileServer
from .session import PeerSession
from .stun_client import StunClient
from .tasks import Supervisor
from .transfers import Transfers

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("kachery_p2p.network")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
KEEPALIVE_INTERVAL = 15.0
DIAL_TIMEOUT = 10.0
STEP_IN_AFTER = 0.5


class PeerNetwork:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.config = node.config
        self.identity = node.identity
        self.endpoint = QuicEndpoint(
            node.identity, on_incoming=self._on_incoming, on_other_datagram=self._on_other_datagram
        )
        self.server = FileServer(node.store)
        self.punch = PunchManager(self.endpoint, node.identity.node_id)
        self.stun = StunClient(self.endpoint)
        self.relay = RelayService(self, self.config.relay_limits) if self.config.relay_mode else None
        self.relay_clients: dict[str, RelayClient] = {}
        self.connecting: set[str] = set()
        self.peer_added = asyncio.Event()
        self._last_punch: dict[str, float] = {}
        self.sessions: dict[str, list[PeerSession]] = {}
        self.transfers = Transfers(self)
        self.local_address: tuple[str, int] | None = None
        self.lan: LanDiscovery | None = None
        self.port_mapping: PortMapping | None = None
        self.tasks = Supervisor()
        self.dialing: set[str] = set()
        # Handlers of further request types (feeds), by message class: registered by their services.
        self.request_handlers: dict[type, Callable[[PeerSession, Any], Awaitable[Any]]] = {}

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.local_address = await self.endpoint.open(self.config.udp_host, self.config.udp_port)
        log.info("QUIC on udp %s:%d", *self.local_address)
        if self.config.port_mapping and not self.config.relay_mode:
            self.port_mapping = PortMapping(self.local_address[1], on_change=lambda _a: self.channels_changed())
            self.spawn(self.port_mapping.run())
        for address in self.config.bootstrap:
            self.tasks.keep_running(functools.partial(self._keep_dialing, address), f"dial {address}")
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
        if self.port_mapping is not None:
            await self.port_mapping.stop()
        if self.lan is not None:
            await self.lan.stop()
        for sessions in self.sessions.values():
            for session in sessions:
                session.close("node shutting down")
        # Let the CONNECTION_CLOSE frames leave before the socket goes.
        await asyncio.sleep(0)
        self.endpoint.close()

    def spawn(self, coro: Awaitable[Any]) -> None:
        self.tasks.spawn(coro)

    # -- sessions ---------------------------------------------------------------------------------
    def new_session(self, link: Link, expected: str | None = None) -> PeerSession:
        return PeerSession(
            link,
            self.identity,
            self.config.label,
            self.node.channels.names,
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
            return await client.answer_punch(request), None
        return await self.server.handle(session, request)

    def _on_other_datagram(self, kind: DatagramKind, data: bytes, addr: tuple[str, int]) -> None:
        if kind == "probe":
            self.punch.datagram_received(data, addr)
        elif self.relay is not None:
            self.relay.datagram_received(kind, data, addr)
        elif kind == "stun":
            self.stun.datagram_received(data, addr)

    def _on_incoming(self, link: Link) -> None:
        session = self.new_session(link)
        self.spawn(self._admit(session))

    async def _admit(self, session: PeerSession) -> None:
        try:
            await session.authenticate()
        except (RemoteProtocolError, LinkClosed) as exc:
            log.info("refused a connection from %s: %s", session.link.path.describe(), exc)
            return
        self.register(session)

    async def dial(self, host: str, port: int, expected_node_id: str | None = None) -> PeerSession:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
        address = str(infos[0][4][0]), port
        link = self.endpoint.connect(address)
        session = self.new_session(link, expected_node_id)
        await session.authenticate(DIAL_TIMEOUT)
        self.register(session)
        return session

    def register(self, session: PeerSession) -> None:
        assert session.node_id is not None
        self.sessions.setdefault(session.node_id, []).append(session)
        self.peer_added.set()
        log.info(
            "connected to %s (%s) at %s, shared channels: %s",
            short_node_id(session.node_id), session.label, session.link.path.describe(), session.shared_channels,
        )
        self.spawn(self._watch(session))
        if self.relay is not None:
            self.relay.session_registered(session)
        if "relay" in session.peer_roles and self.relay is None and session.link.path.kind == "direct":
            client = RelayClient(self, session)
            self.relay_clients[session.node_id] = client
            self.endpoint.relays.add(session.link.path.addr)
            self.tasks.keep_running(
                client.run, f"rendezvous with {session.link.path.describe()}", lambda: not session.link.is_closed
            )

    async def _watch(self, session: PeerSession) -> None:
        reason = await session.link.closed
        assert session.node_id is not None
        client = self.relay_clients.get(session.node_id)
        if client is not None and client.session is session:
            del self.relay_clients[session.node_id]
        if self.relay is not None:
            self.relay.session_closed(session)
        sessions = self.sessions.get(session.node_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self.sessions.pop(session.node_id, None)
        log.info("disconnected from %s: %s", short_node_id(session.node_id), reason)

    def session_for(self, node_id: str) -> PeerSession | None:
        live = [s for s in self.sessions.get(node_id, []) if not s.link.is_closed]
        if not live:
            return None
        # Direct before relayed; then both sides prefer the connection dialed by the smaller node id.
        live.sort(key=lambda s: (s.link.path.kind != "direct", s.link.is_client != (self.identity.node_id < node_id)))
        return live[0]

    def channel_peers(self) -> list[PeerSession]:
        found = []
        for node_id in list(self.sessions):
            session = self.session_for(node_id)
            if session is not None and session.shared_channels:
                found.append(session)
        return found

    async def _keep_dialing(self, address: HostPort) -> None:
        delay = 1.0
        while True:
            try:
                session = await self.dial(address.host, address.port, address.node_id)
                delay = 1.0
                await session.link.closed
            except (RemoteProtocolError, LinkClosed, OSError) as exc:
                # Said loudly once, then quietly while retrying.
                log.log(logging.WARNING if delay == 1.0 else logging.INFO, "could not connect to %s: %s", address, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL / 3)
            now = time.monotonic()
            for sessions in list(self.sessions.values()):
                for session in sessions:
                    if now - session.link.last_activity > KEEPALIVE_INTERVAL and not session.link.is_closed:
                        self.spawn(_quiet(session.link.ping()))

    # -- channels and LAN discovery ------------------------------------------------------------
    def rendezvous_ids(self) -> list[str]:
        return [rendezvous_id(name) for name in self.node.channels.names()]

    def candidates(self) -> list[str]:
        """Addresses a peer may reach us at: reflexive ones seen by relays, then local interfaces."""
        found: list[str] = []
        reflexive = [format_address(a) for a in self.stun.reflexive.values()]
        given = [format_address((a.host, a.port)) for a in [self.config.public_address] if a and _is_ip(a.host)]
        mapped = [format_address(a) for a in [self.port_mapping and self.port_mapping.external] if a]
        for text in [*given, *mapped, *(c.observed for c in self.relay_clients.values() if c.observed), *reflexive]:
            if text not in found:
                found.append(text)
        if self.local_address is not None:
            host, port = self.local_address
            hosts = [host] if host not in ("0.0.0.0", "") else [h for h in default_lan_interfaces() if h != "127.0.0.1"]
            for item in hosts:
                text = format_address((item, port))
                if text not in found:
                    found.append(text)
        return found

    def consider_relay_peer(self, client: RelayClient, node_id: str) -> None:
        """A channel peer seen through a relay: connect, or try again to go direct."""
        if node_id in self.connecting:
            return
        if self.identity.node_id > node_id:
            # The smaller node id connects. It may not have seen us yet (it looks up every few
            # seconds), so we step in ourselves if nothing has connected shortly.
            if self.session_for(node_id) is None:
                self.connecting.add(node_id)
                self.spawn(self._connect_if_still_alone(client, node_id))
            return
        current = self.session_for(node_id)
        if current is not None:
            if current.link.path.kind == "direct" or not self.config.hole_punching:
                return
            if time.monotonic() - self._last_punch.get(node_id, 0.0) < RETRY_DIRECT_SEC:
                return
        self.spawn(self._connect_via_relay(client, node_id, need_relayed=current is None))

    async def _connect_if_still_alone(self, client: RelayClient, node_id: str) -> None:
        try:
            await asyncio.sleep(STEP_IN_AFTER)
        finally:
            self.connecting.discard(node_id)
        if self.session_for(node_id) is None and not client.session.link.is_closed:
            await self._connect_via_relay(client, node_id, need_relayed=True)

    async def _connect_via_relay(self, client: RelayClient, node_id: str, need_relayed: bool) -> None:
        self.connecting.add(node_id)
        self._last_punch[node_id] = time.monotonic()
        relayed = asyncio.ensure_future(client.dial_relayed(node_id)) if need_relayed else None
        try:
            try:
                if self.config.hole_punching:
                    await client.punch_and_dial(node_id)
            except (RemoteProtocolError, LinkClosed, OSError, asyncio.TimeoutError) as exc:
                log.info("direct connection to %s failed: %s", short_node_id(node_id), exc)
            if relayed is not None:
                try:
                    await relayed
                except (RemoteProtocolError, LinkClosed, OSError, asyncio.TimeoutError) as exc:
                    log.info("relayed connection to %s failed: %s", short_node_id(node_id), exc)
        finally:
            self.connecting.discard(node_id)

    def _on_announcement(self, announcement: Announcement, ip: str) -> None:
        node_id = announcement.node_id
        if node_id in self.dialing or self.session_for(node_id) is not None:
            return
        if not set(announcement.rendezvous_ids) & set(self.rendezvous_ids()):
            return
        self.spawn(self._dial_discovered(node_id, ip, announcement.quic_port))

    async def _dial_discovered(self, node_id: str, ip: str, port: int) -> None:
        self.dialing.add(node_id)
        try:
            if self.identity.node_id > node_id:
                # The smaller id dials; we step in only if it has not connected to us shortly.
                await asyncio.sleep(2.0)
                if self.session_for(node_id) is not None:
                    return
            await self.dial(ip, port, node_id)
        except (RemoteProtocolError, LinkClosed, OSError) as exc:
            log.info("could not connect to LAN peer %s at %s:%d: %s", short_node_id(node_id), ip, port, exc)
        finally:
            self.dialing.discard(node_id)

    def channels_changed(self) -> None:
        for sessions in self.sessions.values():
            for session in sessions:
                session.refresh_shared()
                if session.authenticated and not session.link.is_closed:
                    self.spawn(_quiet(session.exchange_channels()))
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
            "nat": self.stun.report(self.local_address) if self.stun.reflexive else None,
            "connecting": sorted(self.connecting),
            "portMapping": self.port_mapping.info() if self.port_mapping else None,
            "bytesServed": self.server.bytes_served,
            "bytesDownloaded": self.transfers.bytes_downloaded,
        }
        if self.relay is not None:
            info.update(self.relay.info())
        return info

    def peers_info(self) -> list[dict[str, Any]]:
        result = []
        for node_id in sorted(self.sessions):
            session = self.session_for(node_id)
            if session is not None:
                result.append(session.info())
        return result

    # -- files --------------------------------------------------------------------------------------
    # -- files: see transfers.py ----------------------------------------------------------------------
    def find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self.transfers.find(uri, timeout)

    async def load(self, uri: FileUri, timeout: float | None, progress: Progress) -> Path:
        return await self.transfers.load(uri, timeout, progress)

    async def read_remote_range(
        self, uri: FileUri, start: int, end: int | None, timeout: float | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        return await self.transfers.read_remote_range(uri, start, end, timeout)


async def _quiet(awaitable: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):
        await awaitable


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
