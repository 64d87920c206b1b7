"""The ``kachery-p2p`` command group and the ``kachery-p2p-*`` commands (the same objects)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..config import PROTOCOL_VERSION
from ..errors import DaemonNotRunningError, NotFoundError
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


@cli.command("stop-daemon", cls=Command)
@click.option("--timeout", type=float, default=15.0, show_default=True, help="Seconds to wait for it to stop.")
def stop_daemon_cmd(timeout: float) -> None:
    """Stop the running daemon and wait until it has stopped."""
    from ..client.api import probe, stop_daemon
    from ..errors import DaemonError

    try:
        stop_daemon()
    except DaemonNotRunningError:
        raise
    except DaemonError:
        pass  # the daemon may close the connection as it stops; the probe loop below tells
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            probe()
        except DaemonNotRunningError:
            click.echo("Daemon stopped.", err=True)
            return
        except DaemonError:
            pass  # reset while it shuts down: keep asking until nothing answers
        time.sleep(0.05)
    raise click.ClickException(f"the daemon did not stop within {timeout:g} s")


@cli.command("node-info", cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def node_info_cmd(as_json: bool) -> None:
    """Show this node's id, label, channels and addresses."""
    from ..client.api import get_node_info

    info = get_node_info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"Node ID: {info['nodeId']}")
    click.echo(f"Label: {info.get('label', '')}")
    click.echo(f"Channels: {', '.join(info.get('channels', [])) or '(none)'}")
    click.echo(f"Storage: {info.get('storageDir')}")
    if info.get("udpAddress"):
        click.echo(f"UDP: {info['udpAddress']}")


@cli.command("join-channel", cls=Command)
@click.argument("name")
def join_channel_cmd(name: str) -> None:
    """Join a channel: nodes that share a channel share files."""
    from ..client.api import join_channel

    click.echo(f"Joined channel: {name}" if join_channel(name) else f"Already in channel: {name}")


@cli.command("leave-channel", cls=Command)
@click.argument("name")
def leave_channel_cmd(name: str) -> None:
    """Leave a channel."""
    from ..client.api import leave_channel

    if leave_channel(name):
        click.echo(f"Left channel: {name}")
    else:
        click.echo(f"Channel not found in joined channels: {name}", err=True)


@cli.command("get-channels", cls=Command)
def get_channels_cmd() -> None:
    """List the joined channels, one per line."""
    from ..client.api import get_channels

    for name in get_channels():
        click.echo(name)


@cli.command("store", cls=Command)
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--basename", default=None, help="Name in the URI (default: the file's name; none for stdin).")
def store_cmd(path: str, basename: str | None) -> None:
    """Store a file (or stdin, as -) in the local content store and print its sha1:// URI."""
    from .store_cmds import store_path_or_stdin

    click.echo(store_path_or_stdin(path, basename))


@cli.command("load", cls=Command)
@click.argument("uri")
@click.option(
    "--dest",
    default=None,
    help="Also write the file here, as cp does: a regular file is replaced atomically, a device or FIFO is"
    " written through; '-' writes the bytes to stdout (and prints no path).",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=None,
    help="Seconds to look for providers before giving up (default 5). Once found, a download is never given up"
    " for being slow: only if no byte arrives for 10 minutes, or the daemon says nothing for 60 s.",
)
@click.option("--json", "as_json", is_flag=True, help="Print progress and the result as JSON lines.")
def load_cmd(uri: str, dest: str | None, timeout: float | None, as_json: bool) -> None:
    """Fetch a file (from the store or from peers) and print its local path."""
    from ..client.api import fetch_file
    from .progress import ProgressPrinter

    with ProgressPrinter(as_json=as_json and dest != "-") as printer:
        path = fetch_file(uri, None if dest == "-" else dest, timeout_sec=timeout, progress=printer.update)
    if dest == "-":
        from ..client.api import iter_bytes
        from ..client.loading import file_blocks

        out = sys.stdout.buffer
        for block in file_blocks(Path(path), lambda: iter_bytes(uri)):
            out.write(block)
        out.flush()
        return
    if as_json:
        click.echo(json.dumps({"type": "done", "path": path}))
    else:
        click.echo(path)


@cli.command("cat", cls=Command)
@click.argument("uri")
@click.option("--start", type=click.IntRange(min=0), default=None, help="First byte (default 0).")
@click.option("--end", type=click.IntRange(min=0), default=None, help="End byte, exclusive (default: file size).")
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=None,
    help="Seconds to look for providers before giving up (default 5).",
)
def cat_cmd(uri: str, start: int | None, end: int | None, timeout: float | None) -> None:
    """Write the file's bytes (or a range of them) to stdout."""
    from ..client.api import iter_bytes

    if start is not None and end is not None and end < start:
        raise click.BadParameter(f"--end {end} is before --start {start}")
    out = sys.stdout.buffer
    for block in iter_bytes(uri, start, end, timeout_sec=timeout):
        out.write(block)
    out.flush()


@cli.command("find", cls=Command)
@click.argument("uri")
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds to wait for answers."
)
@click.option(
    "--original-format", is_flag=True,
    help='Print what the original kachery-p2p printed: {"nodeId", "fileKey", "fileSize"}, indented.',
)
def find_cmd(uri: str, timeout: float, original_format: bool) -> None:
    """List the nodes that have a file, one JSON object per line as answers arrive:
    {"nodeId": hex, "label": text, "size": bytes, "local": true if it is this node}."""
    from ..client.api import find_file

    found = False
    for provider in find_file(uri, timeout_sec=timeout):
        found = True
        click.echo(json.dumps(find_record(provider, original_format), indent=4 if original_format else None))
    if not found:
        raise NotFoundError(f"no provider found for {uri}")


def find_record(provider: dict[str, Any], original_format: bool) -> dict[str, Any]:
    """One provider in the documented schema, or in the original kachery-p2p's."""
    node_id = provider.get("nodeId", provider.get("node_id"))
    size = provider.get("size", provider.get("fileSize"))
    if original_format:
        return {"nodeId": node_id, "fileKey": provider.get("fileKey"), "fileSize": size}
    return {"nodeId": node_id, "label": provider.get("label"), "size": size, "local": bool(provider.get("local"))}


@cli.command("peers", cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per peer.")
def peers_cmd(as_json: bool) -> None:
    """List connected peers: node id, label, shared channels, path, address, RTT."""
    from ..client.api import get_peers

    peers = get_peers()
    if as_json:
        for peer in peers:
            click.echo(json.dumps(peer))
        return
    if not peers:
        click.echo("No peers connected.", err=True)
    for peer in peers:
        click.echo(_peer_line(peer))


def _peer_line(peer: dict[str, Any]) -> str:
    rtt = peer.get("rttMs")
    rtt_text = f"{rtt:.1f} ms" if isinstance(rtt, (int, float)) else "-"
    channels = ",".join(peer.get("channels", []))
    label, path, address = peer.get("label", ""), peer.get("path", "-"), peer.get("address", "-")
    return f"{peer['nodeId'][:12]}  {label:<16} {path:<8} {address:<22} {rtt_text:>9}  {channels}"


from .nat_cmd import nat_check_cmd  # noqa: E402
from .store_cmds import du_cmd, ls_cmd, rm_cmd  # noqa: E402
from .transfers_cmds import cancel_cmd, transfers_cmd  # noqa: E402
from .ui_cmd import ui_cmd  # noqa: E402

for _command in (ls_cmd, du_cmd, rm_cmd, transfers_cmd, cancel_cmd, ui_cmd):
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
