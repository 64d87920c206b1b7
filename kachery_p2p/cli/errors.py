"""The one place where exceptions become a one-line message and an exit code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from .. import __version__
from ..client_config import PROTOCOL_VERSION
from ..errors import KacheryP2PError

VERSION_MESSAGE = f"%(prog)s %(version)s [{PROTOCOL_VERSION}]"


ENVIRONMENT_HELP = (
    "Environment: KACHERY_P2P_CONFIG_DIR (default ~/.kachery-p2p), KACHERY_STORAGE_DIR (default"
    " ~/kachery-storage), KACHERY_P2P_API_PORT (default: the port the running daemon recorded in its config"
    " dir, else 20431), KACHERY_P2P_BOOTSTRAP (relays or peers to dial, HOST:PORT, comma-separated)."
)


def _fail(message: str, code: int, as_json: bool = False, error_code: str = "error") -> None:
    """One line: ``Error: ...`` on stderr, or under --json a JSON error object on stdout."""
    if as_json:
        click.echo(json.dumps({"type": "error", "code": error_code, "message": message}))
    else:
        click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class _ReaderGone(Exception):
    """stdout's reader went away. Not an OSError, so that click does not turn it into exit 1."""


class _FriendlyMain:
    """Runs click without its standalone mode, so every failure is one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except BrokenPipeError:
            raise _ReaderGone() from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        **extra: Any,
    ) -> Any:
        as_json = "--json" in (sys.argv[1:] if args is None else args)
        try:
            result = super().main(  # type: ignore[misc]
                args=args, prog_name=prog_name, standalone_mode=False, **extra
            )
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
            _fail(exc.format_message() + hint, 2, as_json, "bad_request")
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code, as_json)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except KacheryP2PError as exc:
            from ..error_codes import code_for  # the table loads only on an error

            _fail(str(exc), exc.exit_code, as_json, code_for(exc)[1])
        except KeyboardInterrupt:
            sys.exit(130)
        except (BrokenPipeError, _ReaderGone):
            # The reader went away (``kachery-p2p-cat ... | head``): what it wanted, it got. Point stdout at
            # /dev/null so the flush at exit does not fail again (which would make the exit status 120).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        if isinstance(result, int):
            sys.exit(result)
        sys.exit(0)


class Command(_FriendlyMain, click.Command):  # type: ignore[misc]
    """Every command shows its defaults and the environment it reads in --help, and has --version."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = dict(kwargs.get("context_settings") or {})
        settings.setdefault("show_default", True)
        kwargs["context_settings"] = settings
        if kwargs.get("epilog") is None:
            kwargs["epilog"] = ENVIRONMENT_HELP
        super().__init__(*args, **kwargs)
        if not any("--version" in getattr(param, "opts", ()) for param in self.params):
            click.version_option(__version__, prog_name=f"kachery-p2p {self.name}", message=VERSION_MESSAGE)(self)


class Group(_FriendlyMain, click.Group):  # type: ignore[misc]
    command_class = Command
