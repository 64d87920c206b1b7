"""``kachery-p2p-nat-check``: a summary for people by default, ``--json`` for programs; exit 1 when UDP
does not work (no STUN server answered), so scripts can tell. When a daemon runs, it also says how that daemon
reaches each relay (UDP, or TLS/TCP when UDP gets no answer) and why."""

from __future__ import annotations

import json

import click

from ..errors import KacheryP2PError
from .errors import Command


@click.command("nat-check", cls=Command)
@click.option("--server", "servers", multiple=True, help="STUN server HOST:PORT (a relay; repeatable). "
              "Default: the relays in $KACHERY_P2P_BOOTSTRAP.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds the whole check may take (DNS and RFC 3489 tests included).")
@click.option("--no-rfc3489", is_flag=True, help="Skip the classic pystun3 (RFC 3489) classification.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def nat_check_cmd(servers: tuple[str, ...], timeout: float, no_rfc3489: bool, as_json: bool) -> int:
    """Report this machine's NAT situation: whether UDP works, the public address, the mapping
    behaviour and what it means for direct connections."""
    from ..config import HostPort, bootstrap_from_environ
    from ..errors import ConfigError
    from .nat_check import format_summary, run_nat_check

    addresses = [HostPort.parse(s) for s in servers] or list(bootstrap_from_environ())
    if not addresses:
        raise ConfigError("give a STUN server with --server HOST:PORT (any kachery-p2p relay answers STUN)")
    report = run_nat_check([(a.host, a.port) for a in addresses], timeout=timeout, use_pystun=not no_rfc3489)
    try:
        from ..client.api import get_node_info

        info = get_node_info()
        report["daemon"] = {"candidates": info.get("candidates"), "relays": info.get("relays"),
                            "relayTransports": info.get("relayTransports") or []}
    except KacheryP2PError:
        report["daemon"] = None
    click.echo(json.dumps(report, indent=2) if as_json else format_summary(report))
    return 0 if report.get("udp_works") else 1
