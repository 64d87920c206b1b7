"""``kachery-p2p-start-daemon``: turn options and environment into a DaemonConfig and run it."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from ..config import (
    DEFAULT_UDP_PORT,
    DaemonConfig,
    HostPort,
    api_port_from_environ,
    bootstrap_from_environ,
    config_dir_from_environ,
    parse_port,
    storage_dir_from_environ,
)
from ..errors import ConfigError, PortInUseError
from ..relay.limits import RelayLimits


def start_daemon(
    *,
    label: str,
    udp_port: int | None,
    udp_hosts: tuple[str, ...],
    api_port: int | None,
    bootstrap: tuple[str, ...],
    lan_discovery: bool,
    lan_interfaces: tuple[str, ...],
    hole_punching: bool,
    birthday_probing: bool = True,
    port_mapping: bool = True,
    relay_tcp: bool = True,
    relay_tcp_ports: tuple[int, ...] = (),
    relay_mode: bool,
    relay_limits: RelayLimits,
    public_address: str | None,
    verbose: int,
    auth_group: str | None = None,
    api_host: str | None = None,
    log_file: str | None = None,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        **_log_target(log_file),
    )
    if len(label) > 64:
        raise ConfigError("--label is limited to 64 characters")
    config = DaemonConfig(
        config_dir=config_dir_from_environ(),
        storage_dir=storage_dir_from_environ(),
        api_port=parse_port(api_port, what="--api-port", allow_zero=False)
        if api_port is not None
        else api_port_from_environ(),
        udp_port=parse_port(udp_port, what="--port") if udp_port is not None else DEFAULT_UDP_PORT,
        udp_host=_bind_host(udp_hosts),
        udp_binds=_binds(udp_hosts),
        label=label or os.uname().nodename[:64],
        bootstrap=tuple(HostPort.parse(item) for item in bootstrap) + bootstrap_from_environ(),
        lan_discovery=lan_discovery,
        lan_interfaces=_lan_interfaces(lan_interfaces) if lan_discovery else (),
        hole_punching=hole_punching,
        birthday_probing=birthday_probing,
        port_mapping=port_mapping,
        relay_tcp=relay_tcp,
        relay_tcp_ports=relay_tcp_ports,
        relay_mode=relay_mode,
        relay_limits=relay_limits,
        public_address=HostPort.parse(public_address) if public_address else None,
        auth_group=_auth_group(auth_group),
        api_public_host=_api_host(api_host),
    )
    from ..daemon.run import run_daemon

    try:
        run_daemon(config)
    except PortInUseError as exc:
        raise PortInUseError(f"{exc} Choose another port with {_port_option(exc.kind, api_port)}", exc.kind) from None


def _port_option(kind: str, api_port: int | None) -> str:
    if kind == "udp":
        return "--port (0 picks a free one)"
    if api_port is not None or not os.environ.get("KACHERY_P2P_API_PORT"):
        return "--api-port"
    return "KACHERY_P2P_API_PORT"


def _ipv4(address: str, option: str) -> str:
    import ipaddress

    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise ConfigError(f"{option} needs an IPv4 address, not {address!r}") from None
    return address


def _binds(given: tuple[str, ...]) -> tuple[str, ...]:
    """Every --bind address (IPv4 or IPv6, each once); () for the default (every address)."""
    import ipaddress

    out: list[str] = []
    for address in given:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"--bind needs an IP address, not {address!r}") from None
        if ip.is_unspecified or ip.is_multicast:
            raise ConfigError(f"--bind needs a unicast address of this host, not {address!r}; "
                              "leave --bind out to listen on every address")
        if str(ip) not in out:
            out.append(str(ip))
    return tuple(out)


def _bind_host(given: tuple[str, ...]) -> str:
    """The socket's own address: the one --bind address, else the (dual-stack) wildcard."""
    binds = _binds(given)
    return binds[0] if len(binds) == 1 else "0.0.0.0"


def _lan_interfaces(given: tuple[str, ...]) -> tuple[str, ...]:
    for address in given:
        _ipv4(address, "--lan-interface")
    if given:
        return given
    from ..daemon.lan import default_lan_interfaces

    return tuple(default_lan_interfaces())


def _auth_group(group: str | None) -> str | None:
    """--auth-group (a daemon shared by a lab's unix group), checked before anything starts."""
    from ..daemon.control_access import group_id

    if group is not None:
        group_id(group)
    return group


def _api_host(host: str | None) -> str | None:
    """--api-host: one specific non-loopback address, checked before anything starts."""
    from ..daemon.control_access import check_api_host

    return check_api_host(host) if host else None


def _log_target(log_file: str | None) -> dict[str, Any]:
    """basicConfig's stream or file arguments; a log file that cannot be opened is a ConfigError."""
    if log_file is None:
        return {"stream": sys.stderr}
    try:
        handle = open(log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - the log's for the process
    except OSError as exc:
        raise ConfigError(f"cannot open --log-file {log_file}: {exc.strerror or exc}") from None
    return {"stream": handle}
