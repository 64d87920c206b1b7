"""``kachery-p2p-start-daemon --install-service``: a systemd unit that starts the daemon at boot.

A node gets a user unit (``~/.config/systemd/user/kachery-p2p.service``); run as root (a relay on a
server) it gets a system unit (``/etc/systemd/system/kachery-p2p[-relay].service``). The unit runs the
same command with the options given, and the environment variables that choose the daemon's dirs and
ports. ``KACHERY_P2P_UNIT_DIR`` writes the unit there instead and leaves systemctl alone (tests, or to
install it by hand).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import click
from click.core import ParameterSource

from ..errors import ConfigError

UNIT_DIR_ENV = "KACHERY_P2P_UNIT_DIR"
# Passed on into the unit when set at install time.
PASSED_ENV = ("KACHERY_P2P_CONFIG_DIR", "KACHERY_STORAGE_DIR", "KACHERY_P2P_API_PORT", "KACHERY_P2P_BOOTSTRAP")
SERVICE_FLAGS = ("install_service", "uninstall_service")
_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def unit_name(relay: bool) -> str:
    return "kachery-p2p-relay.service" if relay else "kachery-p2p.service"


def is_system() -> bool:
    """A system unit when run as root; a user unit otherwise."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def unit_dir(system: bool, environ: Mapping[str, str]) -> Path:
    override = environ.get(UNIT_DIR_ENV)
    if override:
        return Path(override).expanduser()
    if system:
        return Path("/etc/systemd/system")
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def quote(arg: str) -> str:
    """One argument of an ExecStart= line (systemd's quoting; % and $ are escaped)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def given_options(ctx: click.Context) -> list[str]:
    """The options given on the command line, rendered back into arguments (service flags left out)."""
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None or param.name in SERVICE_FLAGS:
            continue
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        name = max(param.opts, key=len)
        if param.count:
            args += [name] * int(value)
        elif param.is_bool_flag and param.secondary_opts:
            args.append(name if value else max(param.secondary_opts, key=len))
        elif param.is_flag:
            if value:
                args.append(name)
        elif param.multiple:
            for item in value:
                args += [name, str(item)]
        elif value is not None:
            args += [name, str(value)]
    return args


def render_unit(argv: Iterable[str], environ: Mapping[str, str], system: bool, relay: bool) -> str:
    what = "relay" if relay else "node"
    lines = [
        "[Unit]",
        f"Description=kachery-p2p {what} (peer-to-peer sharing of kachery files)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(quote(a) for a in argv),
    ]
    for key in PASSED_ENV:
        if environ.get(key):
            lines.append(f"Environment={quote(f'{key}={environ[key]}')}")
    lines += ["Restart=on-failure", "RestartSec=5", "KillSignal=SIGTERM", "TimeoutStopSec=20"]
    if system:
        lines.append("NoNewPrivileges=yes")
    lines += ["", "[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}", ""]
    return "\n".join(lines)


def _systemctl(system: bool, *args: str) -> tuple[bool, str]:
    command = ["systemctl", *([] if system else ["--user"]), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return result.returncode == 0, (result.stderr or result.stdout).strip()


def _can_manage(environ: Mapping[str, str]) -> str | None:
    """Why systemctl is not used (None when it is)."""
    if environ.get(UNIT_DIR_ENV):
        return f"{UNIT_DIR_ENV} is set"
    if shutil.which("systemctl") is None:
        return "systemctl is not available here"
    return None


def install_service(ctx: click.Context, relay: bool, verbose: int, environ: Mapping[str, str]) -> None:
    system = is_system()
    argv = [sys.executable, "-m", "kachery_p2p", "start-daemon", *given_options(ctx)]
    if not verbose:
        argv.append("-v")  # the journal should show joins, loads and files served
    directory = unit_dir(system, environ)
    path = directory / unit_name(relay)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(render_unit(argv, environ, system, relay))
    except OSError as exc:
        raise ConfigError(f"cannot write the unit {path}: {exc.strerror or exc}") from None
    click.echo(f"Wrote {path}")
    scope = "" if system else "--user "
    name = unit_name(relay)
    if _daemon_running():
        click.echo("Note: a daemon is running now with these settings; the service can start only after "
                   "kachery-p2p-stop-daemon (one daemon per config dir).", err=True)
    reason = _can_manage(environ)
    if reason is None:
        ok, message = _systemctl(system, "daemon-reload")
        if ok:
            ok, message = _systemctl(system, "enable", "--now", name)
        if ok:
            click.echo(f"Enabled and started {name}.")
        else:
            reason = f"systemctl failed: {message.splitlines()[-1] if message else 'no reason given'}"
    if reason is not None:
        click.echo(f"Not enabled ({reason}). To enable it:")
        click.echo(f"  systemctl {scope}daemon-reload && systemctl {scope}enable --now {name}")
    if not system:
        click.echo(f"To keep it running after you log out and start it at boot: loginctl enable-linger {_user()}")
    click.echo(f"Logs: journalctl {scope}-u {name} -f")
    click.echo(f"Status: systemctl {scope}status {name}")
    click.echo(f"Remove: kachery-p2p-start-daemon --uninstall-service{' --relay' if relay else ''}")


def uninstall_service(relay: bool, environ: Mapping[str, str]) -> None:
    system = is_system()
    name = unit_name(relay)
    path = unit_dir(system, environ) / name
    if _can_manage(environ) is None and path.exists():
        _systemctl(system, "disable", "--now", name)
    try:
        path.unlink()
    except FileNotFoundError:
        raise ConfigError(f"no service installed at {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot remove {path}: {exc.strerror or exc}") from None
    if _can_manage(environ) is None:
        _systemctl(system, "daemon-reload")
    click.echo(f"Removed {path}")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "$USER")


def run_service_flags(install: bool, uninstall: bool, relay: bool, verbose: int) -> None:
    """What ``--install-service`` / ``--uninstall-service`` do instead of running the daemon."""
    if install and uninstall:
        raise ConfigError("give --install-service or --uninstall-service, not both")
    if uninstall:
        uninstall_service(relay, os.environ)
    else:
        install_service(click.get_current_context(), relay, verbose, os.environ)


def _daemon_running() -> bool:
    from ..client.api import probe
    from ..errors import KacheryP2PError

    try:
        probe()
    except KacheryP2PError:
        return False
    return True
