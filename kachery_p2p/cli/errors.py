"""The one place where exceptions become a one-line message and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from ..errors import KacheryP2PError


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class _FriendlyMain:
    """Runs click without its standalone mode, so every failure is one line on stderr."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(  # type: ignore[misc]
                args=args, prog_name=prog_name, standalone_mode=False, **extra
            )
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
            _fail(exc.format_message() + hint, 2)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except KacheryP2PError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:
            # Reader went away (``kachery-p2p-cat ... | head``): not an error worth a word.
            sys.stderr.close()
            sys.exit(0)
        if isinstance(result, int):
            sys.exit(result)
        sys.exit(0)


class Command(_FriendlyMain, click.Command):  # type: ignore[misc]
    pass


class Group(_FriendlyMain, click.Group):  # type: ignore[misc]
    command_class = Command
