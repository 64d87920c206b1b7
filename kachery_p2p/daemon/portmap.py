"""Keep a port mapping of the node's UDP port on the home router: PCP / NAT-PMP (nat.portmap), else UPnP IGD.

A thin pump: ``nat.portmap.PortMapper`` makes every decision for PCP and NAT-PMP; UPnP IGD goes through
miniupnpc (the reference implementation's own client library, run in a thread because it blocks). The mapped
address is published as a candidate, so a peer can reach the node directly even behind a symmetric NAT.
Nothing here blocks start-up or raises: where no gateway offers a mapping, ``run`` ends after a few seconds and
``info()`` says why. ``stop`` removes the mapping (lifetime 0 / DeletePortMapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from kachery_p2p.daemon.deadline import within

from ..nat.portmap import GIVE_UP_SEC, PORT, Mapped, MappingFailed, PortMapper

log = logging.getLogger("kachery_p2p.portmap")

Address = tuple[str, int]
UPNP_DISCOVER_MS = 1500
UPNP_LEASE_SEC = 3600
UPNP_TIMEOUT_SEC = 8.0


def default_gateway() -> str | None:
    """The IPv4 default gateway (Linux: /proc/net/route; macOS and others: ``route -n get default``), or None."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/net/route") as table:
                for line in table.read().splitlines()[1:]:
                    fields = line.split()
                    if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 2:
                        return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
        except (OSError, ValueError):
            return None
        return None
    import subprocess

    try:
        out = subprocess.run(["route", "-n", "get", "default"], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "gateway":
            return value.strip() or None
    return None


def _local_ip_towards(gateway: str) -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((gateway, PORT))
        return str(probe.getsockname()[0])
    return None


class _GatewaySocket(asyncio.DatagramProtocol):
    def __init__(self, mapper: PortMapper, wake: asyncio.Event) -> None:
        self.mapper, self.wake = mapper, wake

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.mapper.receive_datagram(data, (addr[0], addr[1]), time.monotonic())
        self.wake.set()


class PortMapping:
    """Maps ``internal_port`` on the default gateway while the daemon runs; ``on_change`` gets each new address."""

    def __init__(self, internal_port: int, on_change: Callable[[Address | None], None] = lambda _a: None,
                 gateway: str | None = None, protocols: tuple[str, ...] = ("pcp", "natpmp", "upnp")) -> None:
        self.internal_port = internal_port
        self.protocols = protocols
        self.on_change = on_change
        self.gateway = gateway
        self.external: Address | None = None
        self.protocol: str | None = None
        self.state = "starting"
        self._mapper: PortMapper | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._upnp: Any = None
        self._stopped = False

    def info(self) -> dict[str, Any]:
        external = f"{self.external[0]}:{self.external[1]}" if self.external else None
        return {"state": self.state, "protocol": self.protocol, "external": external, "gateway": self.gateway}

    async def run(self) -> None:
        """Obtain and keep the mapping; returns when none can be had (never raises)."""
        try:
            self.gateway = self.gateway or default_gateway()
            if self.gateway is None:
                self.state = "no default gateway"
                return
            if any(p in self.protocols for p in ("pcp", "natpmp")) and await self._run_pcp_natpmp():
                return
            if not self._stopped and "upnp" in self.protocols:
                await self._run_upnp()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a port mapping is a bonus: never let it take anything down
            log.warning("port mapping failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self.state = f"failed: {exc}"

    def _set(self, external: Address | None, protocol: str | None, state: str) -> None:
        changed = external != self.external
        self.external, self.protocol, self.state = external, protocol, state
        if changed:
            if external:
                log.info("port mapping: %s:%d -> local port %d (%s)", *external, self.internal_port, protocol)
            self.on_change(external)

    async def _run_pcp_natpmp(self) -> bool:
        """True when PCP / NAT-PMP held a mapping until stop; False when the gateway offers neither."""
        assert self.gateway is not None
        client_ip = _local_ip_towards(self.gateway)
        if client_ip is None:
            self.state = "gateway unreachable"
            return True
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        wanted = tuple(p for p in self.protocols if p in ("pcp", "natpmp"))
        mapper = self._mapper = PortMapper(self.gateway, client_ip, self.internal_port, time.monotonic(),
                                           protocols=wanted)
        transport, _ = await loop.create_datagram_endpoint(lambda: _GatewaySocket(mapper, wake), family=socket.AF_INET)
        self._transport = transport
        try:
            while True:
                now = time.monotonic()
                mapper.handle_timer(now)
                for data, addr in mapper.datagrams_to_send(now):
                    transport.sendto(data, addr)
                while (event := mapper.next_event()) is not None:
                    if isinstance(event, Mapped):
                        self._set(event.external, event.protocol, "mapped")
                    elif isinstance(event, MappingFailed):
                        held = self.external is not None
                        self._set(None, None, event.reason)
                        return held and not self._stopped
                timer = mapper.get_timer()
                if timer is None:
                    return True
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(wake.wait(), max(0.0, timer - time.monotonic()))
        finally:
            if not self._stopped:
                transport.close()

    async def _run_upnp(self) -> None:
        try:
            import miniupnpc
        except ImportError:
            self.state = "no PCP/NAT-PMP gateway (UPnP needs the miniupnpc package)"
            return
        self.state = "trying UPnP IGD"
        upnp = miniupnpc.UPnP()
        upnp.discoverdelay = UPNP_DISCOVER_MS

        def add() -> Address | None:
            if not upnp.discover():
                return None
            upnp.selectigd()
            ip = str(upnp.externalipaddress())
            for eport in (self.internal_port, 0):
                try:
                    port = eport or self.internal_port + 1 + (hash(upnp.lanaddr) % 1000)
                    upnp.addportmapping(port, "UDP", upnp.lanaddr, self.internal_port, "kachery-p2p", "",
                                        UPNP_LEASE_SEC)
                    return ip, port
                except Exception:  # ConflictInMappingEntry and friends: try another external port once
                    continue
            return None

        while not self._stopped:
            try:
                external = await within(asyncio.to_thread(add), UPNP_TIMEOUT_SEC)
            except Exception as exc:
                external = None
                reason = str(exc) or type(exc).__name__
            else:
                reason = "no UPnP IGD answered"
            if external is None:
                self._set(None, None, f"no PCP, NAT-PMP or UPnP gateway ({reason})")
                return
            self._upnp = upnp
            self._set(external, "upnp", "mapped")
            await asyncio.sleep(UPNP_LEASE_SEC / 2)

    async def stop(self, timeout: float = 1.0) -> None:
        """Remove the mapping from the gateway (best effort, bounded by ``timeout``)."""
        self._stopped = True
        mapper, transport = self._mapper, self._transport
        if mapper is not None and transport is not None and not transport.is_closing():
            deadline = time.monotonic() + timeout
            mapper.stop(time.monotonic())
            while mapper.get_timer() is not None and time.monotonic() < deadline:
                now = time.monotonic()
                mapper.handle_timer(now)
                for data, addr in mapper.datagrams_to_send(now):
                    transport.sendto(data, addr)
                await asyncio.sleep(min(0.05, max(0.0, deadline - now)))
            transport.close()
        if self._upnp is not None and self.external is not None:
            port, upnp = self.external[1], self._upnp
            with contextlib.suppress(Exception):
                await within(asyncio.to_thread(upnp.deleteportmapping, port, "UDP"), timeout)
        self._set(None, None, "stopped")


__all__ = ["GIVE_UP_SEC", "PortMapping", "default_gateway"]
