"""``kachery-p2p-ls``, ``-du`` and ``-rm``: what this node's store holds, its disk use, and removing files."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from ..errors import NotFoundError, UsageError
from ..ids import FileUri
from .errors import ENVIRONMENT_HELP, Command
from .units import human_bytes

# The daemon these commands ask is chosen by the environment (the help text of every command).
ENV_HELP = ENVIRONMENT_HELP


def _client() -> Any:
    from ..client.http import ControlClient
    from ..client_config import client_config_from_environ

    return ControlClient(client_config_from_environ())


def _when(stamp: Any) -> str:
    if not isinstance(stamp, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


@click.command("ls", cls=Command, epilog=ENV_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
def ls_cmd(as_json: bool) -> None:
    """List the files this node shares, newest first: URI, size, stored or linked, last access."""
    files = _client().get_json("/store/files")["files"]
    if as_json:
        for entry in files:
            click.echo(json.dumps(entry))
        return
    if not files:
        click.echo("The store is empty.", err=True)
        return
    for entry in files:
        click.echo(f"{entry['uri']}  {human_bytes(entry['size']):>10}  {entry['kind']:<6}  {_when(entry['accessed'])}")


@click.command("du", cls=Command, epilog=ENV_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def du_cmd(as_json: bool) -> None:
    """Show how much the store holds: files, bytes, linked files, partial downloads, free disk."""
    usage = _client().get_json("/store/usage")
    if as_json:
        click.echo(json.dumps(usage, indent=2))
        return
    click.echo(f"Store: {usage['root']}")
    click.echo(f"Files: {usage['files']} ({usage['storedFiles']} stored, {usage['linkedFiles']} linked)")
    click.echo(f"Stored: {human_bytes(usage['storedBytes'])} (on disk {human_bytes(usage['diskBytes'])}"
               f", manifests included)")
    click.echo(f"Linked: {human_bytes(usage['linkedBytes'])} (outside the store)")
    click.echo(f"Partial downloads: {human_bytes(usage['tempBytes'])}")
    if usage.get("freeBytes") is not None:
        click.echo(f"Free disk: {human_bytes(usage['freeBytes'])}")


@click.command("rm", cls=Command, epilog=ENV_HELP)
@click.argument("uris", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def rm_cmd(uris: tuple[str, ...], yes: bool) -> None:
    """Remove files (content and manifest) from this node's store only; peers keep their copies.

    A linked file is unlinked from the store; the file itself is left where it is."""
    sha1s = [FileUri.parse(uri).sha1 for uri in uris]
    client = _client()
    held = {e["sha1"]: e for e in client.get_json("/store/files")["files"]}
    missing = [uri for uri, sha1 in zip(uris, sha1s, strict=True) if sha1 not in held]
    if missing:
        raise NotFoundError(f"not in this node's store: {', '.join(missing)}")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to remove files without confirmation: pass --yes")
        for sha1 in dict.fromkeys(sha1s):
            entry = held[sha1]
            click.echo(f"  {entry['uri']}  {human_bytes(entry['size'])}  {entry['kind']}", err=True)
        click.confirm(f"Remove {len(set(sha1s))} file(s) from this node's store?", abort=True, err=True)
    result = client.post_json("/store/remove", {"uris": list(uris)})
    for item in result["removed"]:
        click.echo(f"Removed {item['uri']} ({', '.join(item['removed'])})")
    if result["notFound"]:
        raise NotFoundError(f"not in this node's store: {', '.join(result['notFound'])}")
