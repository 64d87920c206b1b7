"""What the STUN answers say about this node's NAT (pure functions, no I/O).

Mapping behaviour (RFC 4787) is decided the robust way iroh, Tailscale and proxystore use: ask
several STUN servers from ONE socket and compare the reflexive addresses. Only the mapping decides
whether coordinated hole punching can work; filtering does not, so it is not reported here.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .. import ids

Address = tuple[str, int]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class MappingBehaviour(enum.Enum):
    UNKNOWN = "unknown"
    NO_NAT = "no-nat"  # the reflexive address is our own local address
    ENDPOINT_INDEPENDENT = "endpoint-independent"  # same mapping towards every server: punchable
    ENDPOINT_DEPENDENT = "endpoint-dependent"  # a new mapping per destination: relay (or birthday tricks)


def _norm_host(host: str) -> str:
    """Canonical text for an IP ("::ffff:1.2.3.4" -> "1.2.3.4"); names are compared as given."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _norm(addr: Address) -> Address:
    return _norm_host(addr[0]), int(addr[1])


def _family(host: str) -> int:
    return 6 if ":" in _norm_host(host) else 4


def format_address(addr: Address | None) -> str | None:
    """``ids.format_address``, passing None through."""
    return None if addr is None else ids.format_address(addr)


def _is_local(reflexive: Address, local: Address | None, local_ips: Collection[str]) -> bool:
    """Whether ``reflexive`` is this socket's own address, i.e. nothing rewrote it.

    A socket bound to a wildcard (0.0.0.0 / ::) has no single local IP: the port alone proves
    nothing, because many NATs preserve the source port. So with a wildcard we only say "ours"
    when the port matches AND the reflexive IP is one of ``local_ips`` (the host's interface
    addresses, when the caller knows them). Without them a wildcard never yields NO_NAT.
    """
    if local is None:
        return False
    host, port = _norm(local)
    r_host, r_port = _norm(reflexive)
    if r_port != port:
        return False
    if host in WILDCARD_HOSTS:
        return r_host in {_norm_host(ip) for ip in local_ips}
    return r_host == host


def classify(
    local: Address | None,
    reflexive_by_server: dict[Address, Address],
    local_ips: Collection[str] = (),
) -> MappingBehaviour:
    """Mapping behaviour from the reflexive addresses that servers reported for one socket.

    - every answer equals the local address (see ``_is_local`` for wildcard binds) -> NO_NAT;
    - two answers of the same address family differ -> ENDPOINT_DEPENDENT (even when the two
      servers share an IP: different ports getting different mappings is address-and-port
      dependent mapping);
    - all answers identical and they come from >= 2 different server IPs of one family ->
      ENDPOINT_INDEPENDENT (servers on one IP cannot tell address-dependent mapping apart);
    - otherwise (no answer, one server, one server IP) -> UNKNOWN.
    Answers of different families (IPv4 vs IPv6 servers) are never compared with each other.
    """
    if not reflexive_by_server:
        return MappingBehaviour.UNKNOWN
    if all(_is_local(r, local, local_ips) for r in reflexive_by_server.values()):
        return MappingBehaviour.NO_NAT
    by_family: dict[int, list[tuple[Address, Address]]] = {}
    for server, reflexive in reflexive_by_server.items():
        by_family.setdefault(_family(server[0]), []).append((_norm(server), _norm(reflexive)))
    independent = False
    for answers in by_family.values():
        if len({reflexive for _server, reflexive in answers}) > 1:
            return MappingBehaviour.ENDPOINT_DEPENDENT
        if len({server[0] for server, _reflexive in answers}) >= 2:
            independent = True
    return MappingBehaviour.ENDPOINT_INDEPENDENT if independent else MappingBehaviour.UNKNOWN


@dataclass
class NatReport:
    """This node's NAT situation, as ``kachery-p2p-nat-check`` and the daemon report it."""

    local_address: Address | None
    reflexive_address: Address | None
    mapping: MappingBehaviour
    servers_asked: list[Address] = field(default_factory=list)
    servers_answered: dict[Address, Address] = field(default_factory=dict)  # server -> reflexive address
    udp_works: bool = False

    @classmethod
    def build(
        cls,
        local: Address | None,
        servers_asked: list[Address],
        reflexive_by_server: dict[Address, Address],
        local_ips: Collection[str] = (),
    ) -> NatReport:
        """The report for these answers; the reflexive address is the first server's answer."""
        answered = dict(reflexive_by_server)
        reflexive = next(iter(answered.values()), None)
        return cls(
            local_address=local,
            reflexive_address=reflexive,
            mapping=classify(local, answered, local_ips),
            servers_asked=list(servers_asked),
            servers_answered=answered,
            udp_works=bool(answered),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_address": format_address(self.local_address),
            "reflexive_address": format_address(self.reflexive_address),
            "mapping": self.mapping.value,
            "servers_asked": [format_address(s) for s in self.servers_asked],
            "servers_answered": {format_address(s): format_address(r) for s, r in self.servers_answered.items()},
            "udp_works": self.udp_works,
            "hole_punching": _punching_hint(self.mapping, self.udp_works),
        }


def _punching_hint(mapping: MappingBehaviour, udp_works: bool) -> str:
    if not udp_works:
        return "no STUN server answered: UDP may be blocked here (or the servers are down)"
    return {
        MappingBehaviour.NO_NAT: "not needed: no address translation seen (a firewall may still filter)",
        MappingBehaviour.ENDPOINT_INDEPENDENT: "should work (endpoint-independent mapping)",
        MappingBehaviour.ENDPOINT_DEPENDENT: "unlikely against another NAT: expect relayed connections",
        MappingBehaviour.UNKNOWN: "unknown: ask at least two STUN servers on different IPs",
    }[mapping]
