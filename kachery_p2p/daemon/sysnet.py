"""Everything that differs between operating systems about the network, in one place.

Linux and macOS are both first-class; each function has a portable fallback and never raises.
Interface addresses come from ``ifaddr`` (a small, well-kept cross-platform library); without it,
the address of the default route is found by connecting a UDP socket (which sends nothing).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys

IS_LINUX = sys.platform.startswith("linux")
_LINUX_IP_MULTICAST_ALL = 49
_LINUX_IP_MTU = 14
_UNROUTED_TEST_ADDRESS = ("192.0.2.1", 9)  # TEST-NET-1: only used to ask the kernel for a route


def _usable(ip: str) -> bool:
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified or address.is_multicast)


def lan_ipv4_addresses() -> list[str]:
    """IPv4 addresses of this host's non-loopback interfaces (empty when none can be found)."""
    found: list[str] = []
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if ip.is_IPv4 and isinstance(ip.ip, str) and _usable(ip.ip) and ip.ip not in found:
                    found.append(ip.ip)
    except Exception:  # no ifaddr, or an interface it cannot read: fall back to the default route
        found = []
    if not found:
        found = [ip for ip in [default_route_ipv4()] if ip is not None]
    return found


def default_route_ipv4() -> str | None:
    """The local IPv4 address of the default route, or None (connecting a UDP socket sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_UNROUTED_TEST_ADDRESS)
            ip = str(probe.getsockname()[0])
    except OSError:
        return None
    return ip if _usable(ip) else None


def route_mtu(addr: tuple[str, int]) -> int | None:
    """The MTU of the route to ``addr`` where the OS tells it (Linux IP_MTU), else None."""
    option = getattr(socket, "IP_MTU", _LINUX_IP_MTU if IS_LINUX else None)
    if option is None:
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)  # sends nothing: asks the kernel for the route and its MTU
            return int(probe.getsockopt(socket.IPPROTO_IP, option))
    except OSError:
        return None


def share_port(sock: socket.socket) -> None:
    """Let several daemons on one machine bind the same (multicast) port."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def only_joined_groups(sock: socket.socket) -> None:
    """Receive only the multicast groups this socket joined (Linux delivers all groups joined by anyone
    on the port otherwise; BSD and macOS already behave this way)."""
    if not IS_LINUX:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_MULTICAST_ALL", _LINUX_IP_MULTICAST_ALL), 0)


def ipv6_addresses() -> list[str]:
    """This host's routable IPv6 addresses: global and unique-local, never link-local, loopback or IPv4-mapped
    (the same rule as for IPv4, whose private LAN addresses are candidates too), or []."""
    found: list[str] = []
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if not ip.is_IPv6 or not isinstance(ip.ip, tuple):
                    continue
                with contextlib.suppress(ValueError):
                    address = ipaddress.IPv6Address(ip.ip[0].split("%")[0])
                    usable = not (address.is_link_local or address.is_loopback or address.is_multicast
                                  or address.is_unspecified or address.ipv4_mapped is not None)
                    if usable and str(address) not in found:
                        found.append(str(address))
    except Exception:  # no ifaddr or an unreadable interface: no IPv6 candidates, IPv4 still works
        return []
    return found
