"""Asking the home router for a port mapping with PCP (RFC 6887), falling back to NAT-PMP (RFC 6886). Sans-IO.

A node behind a NAT that maps its QUIC port on the gateway is reachable at the mapped address from anywhere,
even behind a symmetric NAT. Both protocols speak UDP to the gateway's port 5351::

    PCP MAP request (60 bytes)                       PCP MAP response (60 bytes)
      version 2 | opcode 1 | 0 0 | lifetime            version 2 | 0x81 | 0 | result | lifetime | epoch | 12x0
      client ip (16, v4-mapped)                        nonce (12) | proto | 3x0 | internal port | external port
      nonce (12) | proto 17 | 3x0 | int port | sugg. port | sugg. ip (16)              | external ip (16)

    NAT-PMP map UDP request (12 bytes)               NAT-PMP response (16 bytes)
      version 0 | opcode 1 | 0 0 | int port              version 0 | 129 | result (2) | epoch (4)
      suggested ext port | lifetime (4)                  internal port | external port | lifetime (4)
    NAT-PMP external address: request 0 0; response 0 | 128 | result (2) | epoch (4) | ipv4 (4)

``PortMapper`` drives one mapping with the aioquic contract: ``datagrams_to_send(now)``,
``receive_datagram(data, addr, now)``, ``get_timer()`` / ``handle_timer(now)`` and ``next_event()``. It tries PCP,
moves to NAT-PMP when the gateway does not speak PCP, retransmits with RFC 6886's doubling timer (bounded: a
gateway that never answers is given up after about ``GIVE_UP_SEC``), renews at half the granted lifetime, and on
``stop(now)`` asks for lifetime 0 (the mapping is removed). Answers are accepted only from the gateway's port 5351,
only of the exact expected size, and (PCP) only with our nonce: nothing else on the LAN can plant an address.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

PORT = 5351
PCP_VERSION = 2
NATPMP_VERSION = 0
OP_MAP = 1
PROTO_UDP = 17
REQUESTED_LIFETIME = 7200  # seconds; routers may grant less
FIRST_RETRANSMIT_SEC = 0.25
RETRIES_PER_PROTOCOL = 4  # 0.25 + 0.5 + 1 + 2 s: a gateway that offers nothing costs under 4 s per protocol
GIVE_UP_SEC = 2 * (FIRST_RETRANSMIT_SEC * (2**RETRIES_PER_PROTOCOL - 1))
MIN_RENEW_SEC = 30.0

PCP_RESULTS = {
    0: "success", 1: "unsupported version", 2: "not authorized", 3: "malformed request", 4: "unsupported opcode",
    5: "unsupported option", 6: "malformed option", 7: "network failure", 8: "no resources",
    9: "unsupported protocol", 10: "user exceeded quota", 11: "cannot provide external", 12: "address mismatch",
    13: "excessive remote peers",
}
NATPMP_RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized", 3: "network failure",
                  4: "out of resources", 5: "unsupported opcode"}

Address = tuple[str, int]


class PortMapError(ValueError):
    """A datagram that is not the answer we wait for."""


# -- codecs ---------------------------------------------------------------------------------------
def _ip16(host: str) -> bytes:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address("::ffff:" + str(address)).packed
    return address.packed


def _from_ip16(raw: bytes) -> str:
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped) if address.ipv4_mapped is not None else str(address)


def encode_pcp_map(client_ip: str, internal_port: int, lifetime: int, nonce: bytes,
                   suggested: Address | None = None) -> bytes:
    """A PCP MAP request for UDP ``internal_port`` (lifetime 0 deletes the mapping)."""
    if len(nonce) != 12:
        raise ValueError("a PCP nonce is 12 bytes")
    sugg_ip, sugg_port = suggested if suggested else ("::", 0)
    header = struct.pack("!BBHI", PCP_VERSION, OP_MAP, 0, lifetime) + _ip16(client_ip)
    body = nonce + struct.pack("!B3xHH", PROTO_UDP, internal_port, sugg_port) + _ip16(sugg_ip)
    return header + body


@dataclass(frozen=True)
class MapResult:
    protocol: str  # "pcp" or "natpmp"
    result: int
    lifetime: int
    internal_port: int
    external_port: int
    external_ip: str | None  # NAT-PMP answers the address separately
    nonce: bytes = b""

    @property
    def ok(self) -> bool:
        return self.result == 0


def decode_pcp_response(data: bytes) -> MapResult:
    """A PCP MAP response; PortMapError for anything else (a NAT-PMP answer raises too: see ``decode_natpmp``)."""
    if len(data) != 60 or data[0] != PCP_VERSION or data[1] != 0x80 | OP_MAP:
        raise PortMapError("not a PCP MAP response")
    _ver, _op, _res, result, lifetime, _epoch = struct.unpack_from("!BBBBII", data, 0)
    nonce = data[24:36]
    proto, internal_port, external_port = struct.unpack_from("!B3xHH", data, 36)
    if proto != PROTO_UDP:
        raise PortMapError("PCP response for another protocol")
    return MapResult("pcp", result, lifetime, internal_port, external_port, _from_ip16(data[44:60]), nonce)


def encode_natpmp_address_request() -> bytes:
    return bytes([NATPMP_VERSION, 0])


def encode_natpmp_map(internal_port: int, lifetime: int, suggested_port: int = 0) -> bytes:
    return struct.pack("!BBHHHI", NATPMP_VERSION, OP_MAP, 0, internal_port, suggested_port, lifetime)


def decode_natpmp(data: bytes) -> MapResult:
    """A NAT-PMP external-address (op 128) or map-UDP (op 129) response; PortMapError for anything else.

    Any 4-byte-or-longer answer of version 0 with result 1 ("unsupported version") is also what a NAT-PMP-only
    router sends back to a PCP request: it is returned as such, so the mapper moves to NAT-PMP at once."""
    if len(data) < 4 or data[0] != NATPMP_VERSION:
        raise PortMapError("not a NAT-PMP response")
    op, result = data[1], struct.unpack_from("!H", data, 2)[0]
    if op == 128 and len(data) == 12:
        return MapResult("natpmp", result, 0, 0, 0, str(ipaddress.IPv4Address(data[8:12])))
    if op == 128 + OP_MAP and len(data) == 16:
        internal_port, external_port, lifetime = struct.unpack_from("!HHI", data, 8)
        return MapResult("natpmp", result, lifetime, internal_port, external_port, None)
    if result == 1:
        return MapResult("natpmp", result, 0, 0, 0, None)
    raise PortMapError("unexpected NAT-PMP message")


# -- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mapped:
    """The gateway forwards ``external`` to our internal port for ``lifetime`` seconds (renewed by the mapper)."""

    external: Address
    lifetime: int
    protocol: str


@dataclass(frozen=True)
class MappingFailed:
    reason: str


Event = Mapped | MappingFailed


class PortMapper:
    """One UDP mapping of ``internal_port`` on ``gateway``, kept alive until ``stop``."""

    def __init__(self, gateway: str, client_ip: str, internal_port: int, now: float,
                 lifetime: int = REQUESTED_LIFETIME, random_bytes: Callable[[int], bytes] = os.urandom,
                 protocols: tuple[str, ...] = ("pcp", "natpmp")) -> None:
        if not protocols or not set(protocols) <= {"pcp", "natpmp"}:
            raise ValueError(f"protocols must be 'pcp' and/or 'natpmp', not {protocols!r}")
        self.gateway: Address = (gateway, PORT)
        self.client_ip = client_ip
        self.internal_port = internal_port
        self.requested_lifetime = lifetime
        self.nonce = random_bytes(12)
        self.protocols = protocols
        self.protocol = protocols[0]
        self.mapped: Mapped | None = None
        self._external_ip: str | None = None
        self._pending_port: tuple[int, int] | None = None  # NAT-PMP: (external port, lifetime) awaiting the address
        self._stopping = False
        self._tries = 0
        self._interval = FIRST_RETRANSMIT_SEC
        self._timer: float | None = now
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: list[Event] = []

    # -- the contract ---------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> None:
        if self._timer is None or now < self._timer:
            return
        if self._tries >= RETRIES_PER_PROTOCOL:
            if self._stopping:
                self._timer = None
                return
            if self.protocol == "pcp" and self.mapped is None and "natpmp" in self.protocols:
                self._switch_to_natpmp(now)
                return
            self._fail("the gateway stopped answering" if self.mapped else "no PCP or NAT-PMP gateway answered")
            return
        self._send_request()
        self._tries += 1
        self._timer = now + self._interval
        self._interval *= 2

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """An answer from the gateway; anything else (other source, bad size, wrong nonce) is ignored."""
        if addr[1] != PORT or addr[0] != self.gateway[0] or (self._timer is None and not self._stopping):
            return
        try:
            answer = decode_pcp_response(data) if data[:1] == bytes([PCP_VERSION]) else decode_natpmp(data)
        except PortMapError:
            return
        if answer.protocol == "pcp":
            self._on_pcp(answer, now)
        else:
            self._on_natpmp(answer, now)

    def stop(self, now: float) -> None:
        """Ask the gateway to remove the mapping (sent a few times; no event follows)."""
        if self._stopping:
            return
        self._stopping = True
        if self.mapped is None:
            self._timer = None
            return
        self._tries, self._interval, self._timer = 0, FIRST_RETRANSMIT_SEC, now
        self.handle_timer(now)

    # -- internals --------------------------------------------------------------------------------
    def _lifetime(self) -> int:
        return 0 if self._stopping else self.requested_lifetime

    def _send_request(self) -> None:
        if self.protocol == "pcp":
            suggested = self.mapped.external if self.mapped else None
            self._outbox.append((encode_pcp_map(self.client_ip, self.internal_port, self._lifetime(), self.nonce,
                                                suggested), self.gateway))
            return
        suggested_port = self.mapped.external[1] if self.mapped else 0
        if self._external_ip is None and not self._stopping:
            self._outbox.append((encode_natpmp_address_request(), self.gateway))
        self._outbox.append((encode_natpmp_map(self.internal_port, self._lifetime(), suggested_port), self.gateway))

    def _switch_to_natpmp(self, now: float) -> None:
        self.protocol = "natpmp"
        self._tries, self._interval, self._timer = 0, FIRST_RETRANSMIT_SEC, now
        self.handle_timer(now)

    def _fail(self, reason: str) -> None:
        self._timer = None
        self.mapped = None
        self._events.append(MappingFailed(reason))

    def _granted(self, external: Address, lifetime: int, now: float) -> None:
        if self._stopping:
            self._timer = None
            return
        mapped = Mapped(external, lifetime, self.protocol)
        if mapped.external != (self.mapped.external if self.mapped else None):
            self._events.append(mapped)
        self.mapped = mapped
        self._tries, self._interval = 0, FIRST_RETRANSMIT_SEC
        self._timer = now + max(MIN_RENEW_SEC, lifetime / 2)

    def _on_pcp(self, answer: MapResult, now: float) -> None:
        if self.protocol != "pcp" or answer.nonce != self.nonce or answer.internal_port != self.internal_port:
            return
        if not answer.ok:
            if self._stopping:
                self._timer = None
                return
            self._fail(f"PCP: {PCP_RESULTS.get(answer.result, f'error {answer.result}')}")
            return
        ip = answer.external_ip or ""
        if answer.lifetime == 0 or not 1 <= answer.external_port <= 65535 or not _usable(ip):
            self._timer = None if self._stopping else self._timer
            return
        self._granted((ip, answer.external_port), answer.lifetime, now)

    def _on_natpmp(self, answer: MapResult, now: float) -> None:
        if answer.result == 1 and self.protocol == "pcp":  # a NAT-PMP-only gateway answering our PCP request
            if "natpmp" in self.protocols:
                self._switch_to_natpmp(now)
            else:
                self._fail("the gateway speaks only NAT-PMP")
            return
        if self.protocol != "natpmp":
            return
        if not answer.ok:
            if self._stopping:
                self._timer = None
                return
            self._fail(f"NAT-PMP: {NATPMP_RESULTS.get(answer.result, f'error {answer.result}')}")
            return
        if answer.external_ip is not None:
            if _usable(answer.external_ip):
                self._external_ip = answer.external_ip
        elif answer.internal_port == self.internal_port:
            if answer.lifetime == 0 or self._stopping:
                self._timer = None if self._stopping else self._timer
                return
            self._pending_port = (answer.external_port, answer.lifetime)
        if self._external_ip is not None and self._pending_port is not None and 1 <= self._pending_port[0] <= 65535:
            port, lifetime = self._pending_port
            self._pending_port = None
            self._granted((self._external_ip, port), lifetime, now)


def _usable(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (address.is_unspecified or address.is_multicast or address.is_loopback)
