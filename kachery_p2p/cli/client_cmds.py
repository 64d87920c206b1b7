"""The commands that only talk to the running daemon: ``kachery-p2p-load``, ``-store``, ``-cat``, ``-find``,
``-node-info``, the channel commands, ``-peers`` and ``-stop-daemon``.

Their ``kachery-p2p-*`` entry points import this module, not cli/main.py: a command a user types many
times (a load per file) pays only for click and what it uses, not for building every other command.
cli/main.py adds these very objects to the ``kachery-p2p`` group. Keep this module's imports light:
tests/unit/test_cli_imports.py checks what ``kachery-p2p-load`` loads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import DaemonNotRunningError, NotFoundError
from .errors import Command


@click.command("stop-daemon", cls=Command)
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


@click.command("node-info", cls=Command)
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


@click.command("join-channel", cls=Command)
@click.argument("name")
def join_channel_cmd(name: str) -> None:
    """Join a channel: nodes that share a channel share files."""
    from ..client.api import join_channel

    click.echo(f"Joined channel: {name}" if join_channel(name) else f"Already in channel: {name}")


@click.command("leave-channel", cls=Command)
@click.argument("name")
def leave_channel_cmd(name: str) -> None:
    """Leave a channel."""
    from ..client.api import leave_channel

    if leave_channel(name):
        click.echo(f"Left channel: {name}")
    else:
        click.echo(f"Channel not found in joined channels: {name}", err=True)


@click.command("get-channels", cls=Command)
def get_channels_cmd() -> None:
    """List the joined channels, one per line."""
    from ..client.api import get_channels

    for name in get_channels():
        click.echo(name)


@click.command("store", cls=Command)
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--basename", default=None, help="Name in the URI (default: the file's name; none for stdin).")
def store_cmd(path: str, basename: str | None) -> None:
    """Store a file (or stdin, as -) in the local content store and print its sha1:// URI."""
    click.echo(store_path_or_stdin(path, basename))


@click.command("load", cls=Command)
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


@click.command("cat", cls=Command)
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


@click.command("find", cls=Command)
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


@click.command("peers", cls=Command)
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


def store_path_or_stdin(path: str, basename: str | None) -> str:
    """``kachery-p2p-store PATH`` or ``kachery-p2p-store -`` (stdin, spooled to a temp file first)."""
    from ..client.api import store_file

    if path != "-":
        return store_file(path, basename)
    import shutil
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="kachery-p2p-stdin-") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
        spool.flush()
        return store_file(spool.name, basename if basename is not None else "")
