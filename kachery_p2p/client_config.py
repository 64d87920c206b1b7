"""What a client needs to find the daemon: the config and storage dirs, the control port and token.

Split from config.py (which re-exports every name here) so that a ``kachery-p2p-*`` command does not
build the daemon's configuration classes at start-up. Only the ``*_from_environ`` functions read the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_API_PORT = 20431
DEFAULT_UDP_PORT = 14507
PROTOCOL_VERSION = "kachery-p2p/1"
API_TOKEN_FILENAME = "api-token"
# The running daemon's control port, written at start and removed at stop: clients that were not told a
# port (no KACHERY_P2P_API_PORT) use it, so ``start-daemon --api-port N`` needs nothing else.
API_PORT_FILENAME = "api-port"
CHANNELS_FILENAME = "channels.json"
LOCK_FILENAME = "daemon.lock"


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
