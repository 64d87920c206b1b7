"""Feed commands: ``kachery-p2p-feeds`` (list local feeds), ``kachery-p2p-print-messages SUBFEED_URI``
(stream a subfeed until Ctrl-C), ``kachery-p2p-create-feed [NAME]``, ``kachery-p2p-append-message``."""

from __future__ import annotations

import json
import sys

import click

from ..errors import UsageError
from .errors import Command


@click.command("feeds", cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per feed.")
def feeds_cmd(as_json: bool) -> None:
    """List the feeds on this node: owned (writeable) ones and copies of other nodes' feeds."""
    from ..client.feeds import feed_faults, list_feeds

    for feed in list_feeds():
        if as_json:
            click.echo(json.dumps(feed))
            continue
        kind = "owned" if feed["writeable"] else "copy "
        names = ",".join(feed["names"]) or "-"
        total = sum(s["numMessages"] for s in feed["subfeeds"])
        click.echo(f"feed://{feed['feedId']}  {kind}  {names}  {len(feed['subfeeds'])} subfeeds  {total} messages")
    for fault in feed_faults():  # peers that sent logs that did not verify (their messages were dropped)
        click.echo(
            f"refused a {fault['kind']} log of feed://{fault['feedId']} (subfeed {fault['subfeedHash']}) "
            f"from peer {fault['peer']}: {fault['message']}",
            err=True,
        )


@click.command("print-messages", cls=Command)
@click.argument("subfeed_uri")
@click.option("--signed", is_flag=True, help="Print the signed messages (body and signature).")
@click.option("--position", type=click.IntRange(min=0), default=0, show_default=True, help="First message to print.")
def print_messages_cmd(subfeed_uri: str, signed: bool, position: int) -> None:
    """Print a subfeed's messages, one JSON object a line, and keep printing new ones until Ctrl-C.

    SUBFEED_URI is feed://<feedId>/<subfeed> (or a snapshot's sha1://.../feed.json?subfeedName=<subfeed>,
    which ends after its last message)."""
    from ..client.feeds import load_subfeed

    subfeed = load_subfeed(subfeed_uri)
    subfeed.set_position(position)
    for message in subfeed.message_stream(signed=signed):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


@click.command("create-feed", cls=Command)
@click.argument("name", required=False)
def create_feed_cmd(name: str | None) -> None:
    """Create a feed owned by this node (named NAME here, if given) and print its feed:// URI."""
    from ..client.feeds import create_feed

    click.echo(create_feed(name).get_uri())


@click.command("append-message", cls=Command)
@click.argument("subfeed_uri")
@click.argument("message")
def append_message_cmd(subfeed_uri: str, message: str) -> None:
    """Append MESSAGE (a JSON object) to a subfeed this node owns, or submit it to the owner otherwise."""
    from ..client.feeds import load_subfeed

    try:
        parsed = json.loads(message)
    except ValueError:
        raise UsageError(f"MESSAGE must be a JSON object, not {message[:60]!r}") from None
    subfeed = load_subfeed(subfeed_uri)
    if subfeed.get_feed().is_writeable():
        subfeed.append_message(parsed)
    else:
        subfeed.submit_message(parsed)
