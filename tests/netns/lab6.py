"""IPv6 for the NAT lab (lab.py): global addresses routed, not translated, behind stateful firewalls.

Many campus and home networks give hosts global IPv6 addresses while their IPv4 sits behind a NAT. The router
then routes IPv6 but runs a stateful firewall: outbound opens a flow, inbound is accepted only for flows the
inside opened (RFC 6092), the same filtering as a port-restricted cone NAT, so two such hosts need the same
simultaneous-open punch. This module adds that to a lab, all inside the lab's own namespaces::

    public segment (the lab bridge): 2001:db8:ff::/64, public hosts and routers' wan get ::N
    LAN of natted host N:             2001:db8:N::/64, router lan ::1, host ::2, default route via ::1

Every namespace on the public segment gets a route to every routed LAN via its router (the bridge is one L2
segment and no namespace has a default IPv6 route, so traffic to any other IPv6 address is dropped).
``remove_ipv4`` turns a host into an IPv6-only one.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

from lab import Host, Lab

PUBLIC6 = "2001:db8:ff::"


@dataclass
class _Ipv6State:
    edges: list[tuple[str, str]] = field(default_factory=list)  # (namespace, interface) on the public segment
    lans: list[tuple[str, str, str]] = field(default_factory=list)  # (prefix, via, router namespace)
    next_public: int = 10


def _state(lab: Lab) -> _Ipv6State:
    state = getattr(lab, "_ipv6", None)
    if state is None:
        state = _Ipv6State()
        lab._ipv6 = state  # type: ignore[attr-defined]
    return state


def _run(*argv: str) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _ip(ns: str, *args: str) -> None:
    _run("ip", "-n", ns, *args)


def ip6tables() -> str:
    return shutil.which("ip6tables-nft") or shutil.which("ip6tables") or "ip6tables"


def _join_segment(lab: Lab, ns: str, dev: str) -> str:
    state = _state(lab)
    address = f"{PUBLIC6}{state.next_public:x}"
    state.next_public += 1
    _ip(ns, "-6", "addr", "add", f"{address}/64", "dev", dev, "nodad")
    for prefix, via, router_ns in state.lans:
        if router_ns != ns:
            _ip(ns, "-6", "route", "add", prefix, "via", via, "dev", dev)
    state.edges.append((ns, dev))
    return address


def add_ipv6(lab: Lab, host: Host) -> str:
    """Give ``host`` a global IPv6 address (see the module docstring); returns it."""
    if host.router_ns is None:
        return _join_segment(lab, host.ns, "eth0")
    state = _state(lab)
    n = len(state.lans) + 1
    prefix, router_lan, host_ip = f"2001:db8:{n:x}::/64", f"2001:db8:{n:x}::1", f"2001:db8:{n:x}::2"
    rns = host.router_ns
    wan = _join_segment(lab, rns, "wan")
    _run("ip", "netns", "exec", rns, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
    _ip(rns, "-6", "addr", "add", f"{router_lan}/64", "dev", "lan", "nodad")
    _ip(host.ns, "-6", "addr", "add", f"{host_ip}/64", "dev", "eth0", "nodad")
    _ip(host.ns, "-6", "route", "add", "default", "via", router_lan, "dev", "eth0")
    ipt = ip6tables()
    for rule in (
        ["-P", "FORWARD", "DROP"],
        ["-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
        ["-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
         "-j", "ACCEPT"],
    ):
        _run("ip", "netns", "exec", rns, ipt, "-w", *rule)
    for ns, dev in state.edges:
        if ns != rns:
            _ip(ns, "-6", "route", "add", prefix, "via", wan, "dev", dev)
    state.lans.append((prefix, wan, rns))
    return host_ip


def remove_ipv4(lab: Lab, host: Host) -> None:
    """Make ``host`` IPv6-only: its IPv4 address and default route go (call after ``add_ipv6``)."""
    _ip(host.ns, "-4", "route", "flush", "default")
    _ip(host.ns, "-4", "addr", "flush", "dev", "eth0")
