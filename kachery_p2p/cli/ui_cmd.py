"""``kachery-p2p-ui``: open the daemon's dashboard in the browser with a one-time login link."""

from __future__ import annotations

import click

from .errors import Command
from .store_cmds import ENV_HELP, _client


@click.command("ui", cls=Command, epilog=ENV_HELP)
@click.option("--no-browser", is_flag=True, help="Print the login link instead of opening a browser (over ssh).")
def ui_cmd(no_browser: bool) -> None:
    """Open the dashboard of the running daemon (a one-time login link, valid for two minutes)."""
    client = _client()
    reply = client.post_json("/ui-login", {})
    url = f"http://{client.config.api_host}:{client.config.api_port}{reply['path']}"
    if not no_browser:
        import webbrowser

        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if opened:
            click.echo("Opened the dashboard in your browser.", err=True)
            return
        click.echo("No browser found here; open this link (it works once):", err=True)
    click.echo(url)
    if no_browser:
        click.echo(
            f"Open it within {reply['expiresInSec']:g} s; it works once. Over ssh, forward the port first: "
            f"ssh -L {client.config.api_port}:127.0.0.1:{client.config.api_port} HOST",
            err=True,
        )
