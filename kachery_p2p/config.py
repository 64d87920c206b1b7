"""Configuration as frozen dataclasses, built once at the entry points (CLI, Python client).

Only the functions named ``*_from_environ`` read the environment; everything below them gets values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .relay.limits import RelayLimits

DEFAULT_API_PORT = 20431
DEFAULT_UDP_PORT = 14507
PROTOCOL_VERSION = "kachery-p2p/1"
API_TOKEN_FILENAME = "api-token"
# The running daemon's control port, written at start and removed at stop: clients that were not told a
# port (no KACHERY_P2P_API_PORT) use it, so ``start-daemon --api-port N`` needs nothing else.
API_PORT_FILENAME = "api-port"
CHANNELS_FILENAME = "channels.json"
LOCK_FILENAME = "daemon.lock"


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


def parse_port(text: str | int, *, what: str, allow_zero: bool = True) -> int:
    """A TCP/UDP port number; ConfigError otherwise."""
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"bad port in {what}: {text!r}") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(f"bad port in {what}: {port} (must be 1-65535)")
    return port


@dataclass(frozen=True)
class ClientConfig:
    """Where a client finds the daemon and its token."""

    config_dir: Path
    api_port: int = DEFAULT_API_PORT
    api_host: str = "127.0.0.1"

    @property
    def token_path(self) -> Path:
        return self.config_dir / API_TOKEN_FILENAME


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
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
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


def config_dir_from_environ(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    value = env.get("KACHERY_P2P_CONFIG_DIR")
    path = Path(value).expanduser() if value else Path.home() / ".kachery-p2p"
    _must_be_a_directory(path, "KACHERY_P2P_CONFIG_DIR" if value else "the config dir")
    return path


def _must_be_a_directory(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is not a directory")


def storage_dir_from_environ(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    value = env.get("KACHERY_STORAGE_DIR")
    path = Path(value).expanduser() if value else Path.home() / "kachery-storage"
    _must_be_a_directory(path, "KACHERY_STORAGE_DIR" if value else "the storage dir")
    return path


def api_port_from_environ(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    value = env.get("KACHERY_P2P_API_PORT")
    if not value:
        return DEFAULT_API_PORT
    return parse_port(value, what="KACHERY_P2P_API_PORT", allow_zero=False)


def bootstrap_from_environ(environ: Mapping[str, str] | None = None) -> tuple[HostPort, ...]:
    env = os.environ if environ is None else environ
    value = env.get("KACHERY_P2P_BOOTSTRAP", "")
    return tuple(HostPort.parse(item) for item in value.replace(",", " ").split() if item)


def client_config_from_environ(environ: Mapping[str, str] | None = None) -> ClientConfig:
    """KACHERY_P2P_API_PORT if set, else the port the running daemon recorded, else the default."""
    env = os.environ if environ is None else environ
    config_dir = config_dir_from_environ(env)
    if env.get("KACHERY_P2P_API_PORT"):
        port = api_port_from_environ(env)
    else:
        port = recorded_api_port(config_dir) or DEFAULT_API_PORT
    return ClientConfig(config_dir=config_dir, api_port=port, api_host=env.get("KACHERY_P2P_API_HOST") or "127.0.0.1")


def recorded_api_port(config_dir: Path) -> int | None:
    """The control port the daemon of ``config_dir`` recorded, if it did and the file is sane."""
    try:
        text = (config_dir / API_PORT_FILENAME).read_text(encoding="ascii").strip()
        port = int(text)
    except (OSError, ValueError):
        return None
    return port if 1 <= port <= 65535 else None
