"""The relay over TCP, for networks that block UDP: the same QUIC packets, framed in a TLS stream.

Relay side (``RelayTcpServer``): a relay started with ``--relay --port P`` also accepts TCP on P, and
``--relay-tcp-port N`` adds ports (443 passes firewalls that allow only web traffic). The stream is TLS with the
relay's own key-bound certificate (as for QUIC). Each connection appears to the rest of the relay as one more UDP
address, ``tcp_address(n)`` (a multicast IPv6 address, which no real datagram can come from and which candidate
parsing refuses, so it is never published): datagrams read from the stream are injected into the node's one
socket transport, and datagrams sent to that address are written to the stream. So the relay's QUIC session with
the node, its registration, its limits and its forwarding work unchanged and still see only ciphertext.

Node side (``TcpFallback``): per relay, if no UDP datagram has come from it ``UDP_GRACE_SEC`` after start (or for
``UDP_SILENT_SEC`` later on), the node opens TLS to the relay (its UDP port, then 443), checks the certificate's key
against the relay's id when it is pinned, and routes every datagram for the relay's address through the stream.
Every ``UDP_PROBE_SEC`` it sends a STUN Binding request to the relay over UDP itself; when an answer comes back,
it closes its session with the relay (``on_back_to_udp``), drops the route and the stream, and the node's dialer
reconnects over UDP at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from kachery_p2p.daemon.deadline import within

from ..config import DaemonConfig
from ..errors import ConfigError
from ..nat.stun import binding_request
from ..quic.identity import NodeIdentity, check_peer_certificate
from ..relay.stream import Deframer, encode_frame
from .udp import Address, UdpTransport, resolve

log = logging.getLogger("kachery_p2p.relay_tcp")

ALPN = "kachery-p2p-relay/1"
HANDSHAKE_TIMEOUT_SEC = 10.0
IDLE_TIMEOUT_SEC = 60.0  # QUIC keepalives cross every <= 20 s
MAX_PER_SOURCE = 8  # TLS streams one IP address may hold open at once (so one host cannot take every slot)
MAX_WRITE_BUFFER = 1 << 20  # beyond this a slow reader loses datagrams, as a full UDP queue would
UDP_GRACE_SEC = 4.0
UDP_SILENT_SEC = 40.0
UDP_PROBE_SEC = 10.0
RECONNECT_MAX_SEC = 30.0


def tcp_address(n: int) -> Address:
    """The address a TCP client appears at inside the relay (ff3e::/16 multicast: never a real source)."""
    return f"ff3e::6b70:{(n >> 16) & 0xFFFF:x}:{n & 0xFFFF:x}", 443


def server_context(identity: NodeIdentity) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN])
    with tempfile.TemporaryDirectory(prefix="kp2p-tls-") as tmp:  # ssl loads keys only from files
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        from cryptography.hazmat.primitives.serialization import Encoding

        cert.write_bytes(identity.certificate().public_bytes(Encoding.PEM))
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.private_pem())
        context.load_cert_chain(cert, key)
    return context


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the key is checked against the relay's id after the handshake
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN])
    return context


def _bounded_writer(writer: asyncio.StreamWriter, dropped: list[int]) -> Callable[[bytes], None]:
    def send(datagram: bytes) -> None:
        if writer.is_closing() or writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            dropped[0] += 1
            return
        writer.write(encode_frame(datagram))

    return send


async def _pump(reader: asyncio.StreamReader, deliver: Callable[[bytes], None]) -> None:
    """Read frames until the stream ends, is idle too long, or is malformed."""
    deframer = Deframer()
    while True:
        data = await within(reader.read(65536), IDLE_TIMEOUT_SEC)
        if not data:
            return
        for datagram in deframer.feed(data):
            deliver(datagram)


class RelayTcpServer:
    """Accepts TLS streams from nodes and makes each one an address of the relay's UDP transport."""

    def __init__(self, transport: UdpTransport, identity: NodeIdentity, max_connections: int = 1000) -> None:
        self.transport = transport
        self.identity = identity
        self.max_connections = max_connections
        self.ports: list[int] = []
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.StreamWriter] = set()
        self._per_source: dict[str, int] = {}
        self._next = 0
        self.stats = {"accepted": 0, "refused": 0, "dropped": 0}

    async def start(self, host: str | list[str], ports: list[int]) -> None:
        context = server_context(self.identity)
        for port in dict.fromkeys(ports):
            any_host = host in ("", "0.0.0.0", "::")  # then every address of both families, as the UDP socket
            server = await asyncio.start_server(self._serve, None if any_host else host, port, ssl=context,
                                                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SEC)
            self._servers.append(server)
            self.ports.append(port)
        log.info("relay also on TCP port(s) %s", ", ".join(map(str, self.ports)))

    async def start_ports(self, host: str | list[str], udp_port: int, extra_ports: tuple[int, ...]) -> None:
        """TCP on the UDP port (a warning if taken: UDP still works) and on every extra port (ConfigError if not)."""
        try:
            await self.start(host, [udp_port])
        except OSError as exc:
            log.warning("relay: cannot accept TCP on port %d (%s); UDP-blocked nodes need --relay-tcp-port",
                        udp_port, exc.strerror)
        for port in extra_ports:
            try:
                await self.start(host, [port])
            except OSError as exc:
                raise ConfigError(f"cannot accept TCP on --relay-tcp-port {port} ({exc.strerror})") from None

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._connections):
            writer.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await within(server.wait_closed(), 2)

    def info(self) -> dict[str, Any]:
        return {"tcpPorts": self.ports, "tcpConnections": len(self._connections), "tcp": dict(self.stats)}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = str((writer.get_extra_info("peername") or ("?",))[0])
        if len(self._connections) >= self.max_connections or self._per_source.get(source, 0) >= MAX_PER_SOURCE:
            self.stats["refused"] += 1
            writer.close()
            return
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._next += 1
        address = tcp_address(self._next)
        dropped = [0]
        self._connections.add(writer)
        self.transport.route_via(address, _bounded_writer(writer, dropped))
        self.stats["accepted"] += 1
        try:
            await _pump(reader, lambda datagram: self.transport.inject(datagram, address))
        except (OSError, ValueError, asyncio.TimeoutError, ssl.SSLError) as exc:
            log.debug("TCP relay client %s: %s", writer.get_extra_info("peername"), exc)
        finally:
            self.stats["dropped"] += dropped[0]
            self.transport.unroute(address)
            self._connections.discard(writer)
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
            writer.close()


class TcpFallback:
    """Keeps one relay reachable: over UDP while it answers there, else over TLS/TCP (see the module docstring)."""

    def __init__(self, transport: UdpTransport, host: str, port: int, relay_node_id: str | None,
                 on_back_to_udp: Callable[[Address], Awaitable[None]], tcp_ports: tuple[int, ...] = ()) -> None:
        self.transport = transport
        self.host = host
        self.relay: Address = (host, port)  # resolved to the address the dialer uses, in run()
        self.relay_node_id = relay_node_id
        self.on_back_to_udp = on_back_to_udp
        self.tcp_ports = tcp_ports or tuple(dict.fromkeys((port, 443)))
        self.transport_in_use = "udp"
        self.why = "the relay answers over UDP"
        self._writer: asyncio.StreamWriter | None = None

    def info(self) -> dict[str, Any]:
        return {"relay": f"{self.relay[0]}:{self.relay[1]}", "transport": self.transport_in_use, "why": self.why}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.relay = await resolve(self.host, self.relay[1], self.transport.dual_stack)
        self.transport.watch(self.relay)
        backoff = 1.0
        while True:
            started = loop.time()
            while True:  # on UDP: wait until it has been silent too long
                heard = self.transport.last_heard(self.relay)
                silent_for = loop.time() - max(heard, started)
                limit = UDP_SILENT_SEC if heard > started else UDP_GRACE_SEC
                if silent_for >= limit:
                    break
                await asyncio.sleep(min(1.0, limit - silent_for))
            self.why = f"no UDP answer from the relay for {limit:g} s"
            if not await self._over_tcp():
                self.transport_in_use = "udp"
                await asyncio.sleep(backoff)
                backoff = min(RECONNECT_MAX_SEC, backoff * 2)
                continue
            backoff = 1.0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for port in self.tcp_ports:
            try:
                reader, writer = await within(
                    asyncio.open_connection(self.relay[0], port, ssl=client_context()), HANDSHAKE_TIMEOUT_SEC)
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                log.debug("relay %s: TCP port %d: %s", self.relay[0], port, exc)
                continue
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            try:
                check_peer_certificate(x509.load_der_x509_certificate(der), self.relay_node_id)
            except Exception as exc:
                log.warning("relay %s on TCP port %d is not the relay we expected: %s", self.relay[0], port, exc)
                writer.close()
                continue
            return reader, writer
        return None

    async def _over_tcp(self) -> bool:
        """Relay over TCP until UDP answers again or the stream ends; False when no TCP port could be reached."""
        connected = await self._connect()
        if connected is None:
            self.why += "; TCP unreachable too"
            return False
        reader, writer = connected
        self._writer = writer
        dropped = [0]
        self.transport.route_via(self.relay, _bounded_writer(writer, dropped))
        self.transport_in_use = "tcp"
        log.warning("relay %s:%d: %s: relaying over TCP", *self.relay, self.why)
        pump = asyncio.ensure_future(_pump(reader, lambda datagram: self.transport.inject(datagram, self.relay)))
        try:
            while not pump.done():
                before = self.transport.last_heard(self.relay)
                self.transport.send_udp(binding_request(os.urandom(12)), self.relay)
                for _ in range(int(UDP_PROBE_SEC / 0.5)):  # the answer, if any, comes within a round trip
                    await asyncio.wait([pump], timeout=0.5)
                    if pump.done() or self.transport.last_heard(self.relay) > before:
                        break
                if self.transport.last_heard(self.relay) > before:
                    log.warning("relay %s:%d answers over UDP again: back to UDP", *self.relay)
                    await self.on_back_to_udp(self.relay)
                    self.why = "the relay answers over UDP again"
                    break
        finally:
            self.transport.unroute(self.relay)
            self.transport_in_use = "udp"
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            writer.close()
            self._writer = None
        return True

    def close(self) -> None:
        self.transport.unroute(self.relay)
        if self._writer is not None:
            self._writer.close()


async def relay_over_tcp(transport: object, config: DaemonConfig, identity: NodeIdentity, udp_port: int,
                         close_sessions_at: Callable[[Address], Awaitable[None]]
                         ) -> tuple[RelayTcpServer | None, list[TcpFallback]]:
    """A relay's TCP server (started), or a node's fallbacks for its bootstrap relays (to run), as configured."""
    if not isinstance(transport, UdpTransport):
        return None, []
    if config.relay_mode:
        server = RelayTcpServer(transport, identity, config.relay_limits.max_registrations)
        await server.start_ports(list(config.udp_binds) or config.udp_host, udp_port, config.relay_tcp_ports)
        return server, []
    if not config.relay_tcp:
        return None, []
    return None, [TcpFallback(transport, a.host, a.port, a.node_id, close_sessions_at) for a in config.bootstrap]
