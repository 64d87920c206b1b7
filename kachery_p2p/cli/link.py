"""``kachery-p2p-link PATH``: share a file where it lies (hashed in place, recorded as a link)."""

from __future__ import annotations

import click

from .errors import Command


@click.command("link", cls=Command)
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--basename", default=None, help="Name in the URI (default: the file's name).")
def link_cmd(path: str, basename: str | None) -> None:
    """Link a file into the store without copying it and print its sha1:// URI.

    The file is served to peers while it keeps its size and mtime; change it and it is no longer
    served (link it again to share the new content).
    """
    from ..client.api import link_file

    click.echo(link_file(path, basename=basename))
