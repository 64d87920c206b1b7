"""Configuration as frozen dataclasses, built once at the entry points (CLI, Python client).

The client's part (ClientConfig, the dirs, the control port) lives in client_config.py, so that client
commands need not build the daemon's classes; every name of it is importable from here too.

Only the functions named ``*_from_environ`` read the environment; everything below them gets values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .client_config import (  # the client's half (client_config.py), re-exported: import either
    API_PORT_FILENAME,
    API_TOKEN_FILENAME,
    CHANNELS_FILENAME,
    DEFAULT_API_PORT,
    DEFAULT_UDP_PORT,
    LOCK_FILENAME,
    PROTOCOL_VERSION,
    ClientConfig,
    api_port_from_environ,
    client_config_from_environ,
    config_dir_from_environ,
    parse_port,
    recorded_api_port,
    storage_dir_from_environ,
)
from .errors import ConfigError

__all__ = [
    "API_PORT_FILENAME",
    "API_TOKEN_FILENAME",
    "CHANNELS_FILENAME",
    "DEFAULT_API_PORT",
    "DEFAULT_UDP_PORT",
    "LOCK_FILENAME",
    "PROTOCOL_VERSION",
    "ClientConfig",
    "DaemonConfig",
    "HostPort",
    "api_port_from_environ",
    "bootstrap_from_environ",
    "client_config_from_environ",
    "config_dir_from_environ",
    "parse_port",
    "recorded_api_port",
    "storage_dir_from_environ",
]

if TYPE_CHECKING:  # the relay's limits load with the daemon, not with every client command
    from .relay.limits import RelayLimits


@dataclass(frozen=True)
class HostPort:
    """A UDP address as given by the user, with an optional pinned node id (``NODEID@HOST:PORT``)."""

    host: str
    port: int
    node_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> HostPort:
        from .ids import parse_node_id

        node_id: str | None = None
        rest = text.strip()
        if "@" in rest:
            pinned, rest = rest.split("@", 1)
            node_id = parse_node_id(pinned)
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"bad address {text!r}: expected HOST:PORT or NODEID@HOST:PORT")
        host = host.strip("[]")
        port = parse_port(port_text, what=f"address {text!r}", allow_zero=False)
        return cls(host=host, port=port, node_id=node_id)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = f"{self.node_id}@" if self.node_id else ""
        return f"{prefix}{host}:{self.port}"


def _default_relay_limits() -> RelayLimits:
    from .relay.limits import RelayLimits

    return RelayLimits()


@dataclass(frozen=True)
class DaemonConfig:
    """Everything a daemon needs; built by ``kachery-p2p-start-daemon``."""

    config_dir: Path
    storage_dir: Path
    api_port: int = DEFAULT_API_PORT
    api_host: str = "127.0.0.1"
    udp_port: int = DEFAULT_UDP_PORT
    udp_host: str = "0.0.0.0"
    udp_binds: tuple[str, ...] = ()  # --bind given more than once: the wildcard socket answers only these
    label: str = ""
    bootstrap: tuple[HostPort, ...] = ()
    lan_discovery: bool = True
    relay_mode: bool = False
    hole_punching: bool = True
    birthday_probing: bool = True  # after a failed punch, cone facing symmetric NAT: probe many ports (nat.birthday)
    relay_tcp: bool = True  # reach relays over TLS/TCP when UDP gets no answer from them
    relay_tcp_ports: tuple[int, ...] = ()  # relay mode: more TCP ports (e.g. 443) beside the UDP port's
    port_mapping: bool = True  # ask the gateway for a mapping (PCP, NAT-PMP, UPnP IGD); never blocks start-up
    relay_limits: RelayLimits = field(default_factory=_default_relay_limits)
    public_address: HostPort | None = None
    multicast_group: str = "239.255.73.117"
    multicast_port: int = 21011
    lan_interfaces: tuple[str, ...] = ("127.0.0.1",)
    auth_group: str | None = None  # --auth-group: token readable by this unix group
    api_public_host: str | None = None  # --api-host: control endpoint also on this address, HTTPS
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def token_path(self) -> Path:
        return self.config_dir / API_TOKEN_FILENAME

    @property
    def api_port_path(self) -> Path:
        return self.config_dir / API_PORT_FILENAME


def bootstrap_from_environ(environ: Mapping[str, str] | None = None) -> tuple[HostPort, ...]:
    env = os.environ if environ is None else environ
    value = env.get("KACHERY_P2P_BOOTSTRAP", "")
    return tuple(HostPort.parse(item) for item in value.replace(",", " ").split() if item)
