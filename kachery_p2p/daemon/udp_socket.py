"""Socket options and binding for the node's UDP socket (``udp.py``): PKTINFO, UDP GRO, the dual-stack wildcard."""

from __future__ import annotations

import contextlib
import os
import socket
import sys

# Linux values; Python's socket module does not export IP_PKTINFO.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", None)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", None)
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103 if sys.platform.startswith("linux") else None)
UDP_GRO = getattr(socket, "UDP_GRO", 104 if sys.platform.startswith("linux") else None)


def enable_gro(sock: socket.socket) -> bool:
    """Turn UDP GRO on (off with KACHERY_P2P_UDP_GRO=0); False where the kernel lacks it."""
    if UDP_GRO is None or os.environ.get("KACHERY_P2P_UDP_GRO", "1") == "0":
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def enable_pktinfo(sock: socket.socket) -> bool:
    """Ask for each datagram's destination address; False where the platform cannot."""
    enabled = False
    if IP_PKTINFO is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            enabled = True
    if sock.family == socket.AF_INET6 and IPV6_RECVPKTINFO is not None:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        except OSError:
            return False
    return enabled


def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on (host, port); the IPv4 wildcard becomes a dual-stack socket where possible."""
    if host in ("", "0.0.0.0") and socket.has_ipv6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in (97, 99, 47):  # EAFNOSUPPORT / EADDRNOTAVAIL (no IPv6 here): fall back to IPv4
                raise
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host or "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
