"""The addresses a node publishes for peers to reach it, most promising first, each checked as a peer checks it.

Order: the operator's ``--public-address``, the router's port mapping, what relays saw (their view and STUN),
then this host's own addresses: global and unique-local IPv6 when the socket is dual-stack (reachable through
stateful firewalls by the simultaneous punch), then the LAN's IPv4 addresses
(or, with several ``--bind``, those addresses). Anything a peer would refuse
(an unspecified or multicast address, such as where a TCP-relayed node appears inside its relay) is left out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from ..channels.rendezvous import format_candidate, parse_candidate
from ..config import HostPort

Address = tuple[str, int]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def gather(*, public: HostPort | None, mapped: Address | None, observed: Iterable[str], reflexive: Iterable[Address],
           local: Address | None, dual_stack: bool, binds: Iterable[str] = (), lan_ipv4: Callable[[], list[str]],
           ipv6: Callable[[], list[str]]) -> list[str]:
    found: list[str] = []

    def add(host: str, port: int) -> None:
        try:
            text = format_candidate(host, port)
        except ValueError:
            return
        if text not in found:
            found.append(text)

    if public is not None and _is_ip(public.host):
        add(public.host, public.port)
    if mapped is not None:
        add(*mapped)
    for text in observed:
        try:
            add(*parse_candidate(text))
        except ValueError:
            continue
    for addr in reflexive:
        add(*addr)
    if local is not None:
        host, port = local
        bound = list(binds)
        if bound and host in ("0.0.0.0", "", "::"):  # several --bind: those addresses only
            for item in bound:
                add(item, port)
        elif host not in ("0.0.0.0", "", "::"):
            add(host, port)
        else:
            for item in ipv6() if dual_stack else []:
                add(item, port)
            for item in lan_ipv4():
                if item != "127.0.0.1":
                    add(item, port)
    return found
