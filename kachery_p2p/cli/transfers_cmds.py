"""``kachery-p2p-transfers`` and ``kachery-p2p-cancel``: what the daemon is moving now, and stopping a download."""

from __future__ import annotations

import json

import click

from ..errors import NotFoundError
from ..ids import FileUri, short_node_id
from .errors import Command
from .store_cmds import ENV_HELP, _client
from .units import human_bytes, human_rate, human_seconds


@click.command("transfers", cls=Command, epilog=ENV_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (downloads, uploads, recent).")
def transfers_cmd(as_json: bool) -> None:
    """List downloads and uploads in progress: URI, bytes, rate, providers or requesting peer, path."""
    snapshot = _client().get_json("/transfers")
    if as_json:
        click.echo(json.dumps(snapshot, indent=2))
        return
    downloads, uploads = snapshot["downloads"], snapshot["uploads"]
    if not downloads and not uploads:
        click.echo("No transfers in progress.", err=True)
    for item in downloads:
        providers = ",".join(short_node_id(p) for p in item["providers"])
        done = f"{human_bytes(item['bytes'])}/{human_bytes(item['size'])}"
        click.echo(
            f"down  {item['uri']}  {done:>19}  {human_rate(item['rate']):>11}  eta {human_seconds(item['etaSec']):>6}"
            f"  from {providers}  {'/'.join(item['paths']) or item['state']}"
        )
    for item in uploads:
        click.echo(
            f"up    {item['uri']}  {human_bytes(item['bytes']):>19}  {human_rate(item['rate']):>11}"
            f"  to {short_node_id(item['peer'])} ({item['label']})  {item['path']}"
        )


@click.command("cancel", cls=Command, epilog=ENV_HELP)
@click.argument("uri")
def cancel_cmd(uri: str) -> None:
    """Stop a download in progress; its verified chunks are kept, so a later load resumes."""
    FileUri.parse(uri).sha1  # noqa: B018 - checks the URI before asking the daemon
    if _client().post_json("/transfers/cancel", {"uri": uri})["cancelled"]:
        click.echo(f"Cancelled the download of {uri}")
    else:
        raise NotFoundError(f"no download of {uri} is in progress")
