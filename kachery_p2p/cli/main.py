"""The ``kachery-p2p`` command group and the ``kachery-p2p-*`` commands (the same objects)."""

from __future__ import annotations

import click

from .. import __version__
from ..client_config import PROTOCOL_VERSION
from .client_cmds import (
    _peer_line,  # noqa: F401 - kept importable from here
    cat_cmd,
    find_cmd,
    find_record,  # noqa: F401 - kept importable from here
    get_channels_cmd,
    join_channel_cmd,
    leave_channel_cmd,
    load_cmd,
    node_info_cmd,
    peers_cmd,
    stop_daemon_cmd,
    store_cmd,
)
from .errors import Command, Group
from .link import link_cmd


@click.group(cls=Group, help="Share kachery files between your computers (peer to peer, over QUIC).")
@click.version_option(__version__, prog_name="kachery-p2p", message=f"%(prog)s %(version)s [{PROTOCOL_VERSION}]")
def cli() -> None:
    pass


@cli.command("start-daemon", cls=Command)
@click.option("--label", default="", help="A short name for this node, shown to peers.")
@click.option("--port", "udp_port", type=int, default=None,
              help="UDP port for QUIC (0 picks a free one) [default: 14507].")
@click.option("--bind", "udp_hosts", multiple=True,
              help="Local address to listen on (repeatable) [default: every address, IPv4 and IPv6].")
@click.option("--api-port", type=int, default=None,
              help="Control port, recorded in the config dir for clients [default: $KACHERY_P2P_API_PORT or 20431].")
@click.option("--bootstrap", multiple=True, help="Relay or peer to dial: HOST:PORT or NODEID@HOST:PORT (repeatable).")
@click.option("--lan-discovery/--no-lan-discovery", default=True, help="Find channel peers on the LAN by multicast.")
@click.option(
    "--lan-interface", "lan_interfaces", multiple=True, help="IPv4 address to announce on (repeatable; default: all)."
)
@click.option("--hole-punching/--no-hole-punching", default=True, help="Try direct paths to relayed peers.")
@click.option("--birthday-probing/--no-birthday-probing", default=True, show_default=True,
              help="When a punch between a cone and a symmetric NAT fails, probe 256 ports (a few seconds).")
@click.option("--port-mapping/--no-port-mapping", default=True, envvar="KACHERY_P2P_PORT_MAPPING", show_default=True,
              help="Ask the router for a port mapping (PCP, NAT-PMP, UPnP IGD) [env KACHERY_P2P_PORT_MAPPING=0].")
@click.option("--relay", "relay_mode", is_flag=True, help="Run as a relay node (on a public server).")
@click.option("--relay-rate", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
              help="Relay mode: MB/s each node may relay.")
@click.option("--relay-quota", type=click.FloatRange(min=0.001), default=50.0, show_default=True,
              help="Relay mode: GiB each node may relay per session.")
@click.option("--relay-max-peers", type=click.IntRange(min=1), default=32, show_default=True,
              help="Relay mode: peers each node may relay to at once.")
@click.option("--relay-max-nodes", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Relay mode: most nodes registered at once.")
@click.option("--relay-tcp-port", "relay_tcp_ports", type=click.IntRange(1, 65535), multiple=True,
              help="Relay mode: also accept nodes over TLS/TCP on this port (repeatable; 443 passes most firewalls). "
              "TCP on the UDP port is always tried.")
@click.option("--relay-tcp/--no-relay-tcp", default=True, show_default=True,
              help="Reach relays over TLS/TCP when UDP gets no answer (networks that block UDP).")
@click.option("--public-address", default=None, help="HOST:PORT that peers should use to reach this relay.")
@click.option("--auth-group", default=None, help="Unix group whose members may use this daemon (token file 0640).")
@click.option("--api-host", default=None,
              help="Also serve the control endpoint on this address over HTTPS (pinned certificate) for other hosts.")
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None, help="Append the log here, not to stderr.")
@click.option("--install-service", is_flag=True, help="Write a systemd unit running the daemon with these options "
              "(user unit; system unit as root), enable and start it. "
              "$KACHERY_P2P_UNIT_DIR: write the unit there and leave systemctl alone.")
@click.option("--uninstall-service", is_flag=True, help="Stop, disable and remove that unit.")
def start_daemon_cmd(
    label: str,
    udp_port: int | None,
    udp_hosts: tuple[str, ...],
    api_port: int | None,
    bootstrap: tuple[str, ...],
    lan_discovery: bool,
    lan_interfaces: tuple[str, ...],
    hole_punching: bool,
    birthday_probing: bool,
    port_mapping: bool,
    relay_mode: bool,
    relay_rate: float,
    relay_quota: float,
    relay_max_peers: int,
    relay_max_nodes: int,
    relay_tcp_ports: tuple[int, ...],
    relay_tcp: bool,
    public_address: str | None,
    auth_group: str | None,
    api_host: str | None,
    verbose: int,
    log_file: str | None,
    install_service: bool,
    uninstall_service: bool,
) -> None:
    """Run the daemon in the foreground (stop it with Ctrl-C or kachery-p2p-stop-daemon), or install it as a
    systemd service (--install-service)."""
    if install_service or uninstall_service:
        from .service import run_service_flags

        return run_service_flags(install_service, uninstall_service, relay_mode, verbose)
    from ..relay.limits import RelayLimits
    from .daemon_cmd import start_daemon

    start_daemon(
        label=label,
        udp_port=udp_port,
        udp_hosts=udp_hosts,
        api_port=api_port,
        bootstrap=bootstrap,
        lan_discovery=lan_discovery,
        lan_interfaces=lan_interfaces,
        hole_punching=hole_punching,
        birthday_probing=birthday_probing,
        port_mapping=port_mapping,
        relay_tcp=relay_tcp,
        relay_tcp_ports=relay_tcp_ports,
        relay_mode=relay_mode,
        relay_limits=RelayLimits(
            max_registrations=relay_max_nodes,
            bytes_per_sec_per_node=relay_rate * 1e6,
            burst_bytes=max(4e6, relay_rate * 1e6 / 2),
            max_bytes_per_node=int(relay_quota * 2**30),
            max_peers_per_node=relay_max_peers,
        ),
        public_address=public_address,
        verbose=verbose,
        auth_group=auth_group,
        api_host=api_host,
        log_file=log_file,
    )


from .nat_cmd import nat_check_cmd  # noqa: E402
from .store_cmds import du_cmd, ls_cmd, rm_cmd  # noqa: E402
from .transfers_cmds import cancel_cmd, transfers_cmd  # noqa: E402
from .ui_cmd import ui_cmd  # noqa: E402

for _command in (
    stop_daemon_cmd, node_info_cmd, join_channel_cmd, leave_channel_cmd, get_channels_cmd, store_cmd, load_cmd,
    cat_cmd, find_cmd, peers_cmd, ls_cmd, du_cmd, rm_cmd, transfers_cmd, cancel_cmd, ui_cmd,
):
    cli.add_command(_command)

# The seed's command names, each the very same command object.
cli.add_command(store_cmd, "store-file")
cli.add_command(load_cmd, "load-file")
cli.add_command(cat_cmd, "cat-file")
cli.add_command(find_cmd, "find-file")
cli.add_command(link_cmd)  # kachery-p2p-link (cli/link.py)
cli.add_command(nat_check_cmd)  # kachery-p2p-nat-check (cli/nat_cmd.py)
from .feeds_cmds import append_message_cmd, create_feed_cmd, feeds_cmd, print_messages_cmd  # noqa: E402

for _command in (feeds_cmd, print_messages_cmd, create_feed_cmd, append_message_cmd):
    cli.add_command(_command)
