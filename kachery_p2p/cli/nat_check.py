"""The diagnosis behind ``kachery-p2p-nat-check`` (blocking I/O, no asyncio).

1. From ONE UDP socket, send our RFC 8489 Binding requests to every server (``StunTransaction``
   retransmission, ``select`` until the next timer) and classify the mapping (``report.classify``).
2. Run pystun3's classic RFC 3489 classification, only against a server that sent OTHER-ADDRESS (one
   that can honour CHANGE-REQUEST; against others, kachery relays among them, its answer means nothing),
   on a socket of its own (pystun3 crashes on foreign datagrams and would eat our answers). It blocks,
   so it runs in a daemon thread with what is left of the deadline; it raises on odd replies:
   everything is caught and reported.

The whole check, DNS included, ends within ``timeout`` seconds.

IPv4 only: pystun3 is IPv4-only, and one AF_INET socket keeps the comparison between servers fair.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

from kachery_p2p.nat.report import NatReport, format_address
from kachery_p2p.nat.stun import StunMessage, StunTransaction, is_stun

Address = tuple[str, int]

PYSTUN_TESTS_WORST_CASE = 12  # three failing RFC 3489 tests x (1 send + 3 retries)
MIN_PYSTUN_BUDGET = 0.3


def _resolve(server: Address) -> Address:
    infos = socket.getaddrinfo(server[0], server[1], socket.AF_INET, socket.SOCK_DGRAM)
    host, port = infos[0][4][:2]
    return str(host), int(port)


def _resolve_all(servers: list[Address], deadline: float) -> tuple[dict[Address, Address], dict[Address, str]]:
    """Resolve every server in parallel threads, giving up at ``deadline``; (resolved, DNS errors)."""
    resolved: dict[Address, Address] = {}
    errors: dict[Address, str] = {}

    def work(server: Address) -> None:
        try:
            resolved[server] = _resolve(server)
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            errors[server] = f"cannot resolve {server[0]} to an IPv4 address (DNS): {reason}"

    threads = [threading.Thread(target=work, args=(server,), daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for server in servers:
        if server not in resolved and server not in errors:
            errors[server] = f"cannot resolve {server[0]} (DNS): no answer in time"
    # in the order given, not the order the threads finished: the first server's answer is the report's
    ordered = {server: resolved[server] for server in servers if server in resolved}
    return ordered, errors


def _route_source(server: Address) -> str | None:
    """The local IP the kernel would send from towards ``server`` (UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(server)
            return str(probe.getsockname()[0])
    except OSError:
        return None


def _run_transactions(sock: socket.socket, servers: list[Address], timeout: float) -> list[StunTransaction]:
    """Run one Binding transaction per server from ``sock`` until all finish or ``timeout`` passes."""
    start = time.monotonic()
    deadline = start + timeout
    txs = [StunTransaction(server, start) for server in servers]
    while True:
        now = time.monotonic()
        for tx in txs:
            tx.handle_timer(now)
            for data, addr in tx.datagrams_to_send(now):
                try:
                    sock.sendto(data, addr)
                except OSError as exc:
                    tx.failed, tx.error = True, f"send failed: {exc}"
        pending = [tx for tx in txs if not tx.done]
        if not pending or now >= deadline:
            break
        timers = [t for t in (tx.get_timer() for tx in pending) if t is not None]
        wake = min([deadline, *timers])
        readable, _w, _x = select.select([sock], [], [], max(0.0, wake - now))
        while readable:
            try:
                data, addr = sock.recvfrom(2048)
            except OSError:
                break
            if is_stun(data):
                try:
                    message = StunMessage.parse(data)
                except ValueError:
                    message = None
                if message is not None:
                    for tx in txs:
                        if tx.receive(message, (str(addr[0]), int(addr[1]))):
                            break
            readable, _w, _x = select.select([sock], [], [], 0)
    for tx in txs:
        if not tx.done:
            tx.error = f"no answer within {timeout:g} s"
    return txs


def _pystun_classify(server: Address, source_ip: str, bind_host: str, budget: float) -> dict[str, Any]:
    """pystun3's RFC 3489 NAT type within ``budget`` seconds; never raises."""
    per_try = max(0.02, (budget - 0.1) / (PYSTUN_TESTS_WORST_CASE + 1))
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            import stun  # pystun3 (its module is called "stun")

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(per_try)
                sock.bind((bind_host, 0))
                nat_type, info = stun.get_nat_type(
                    sock, source_ip, sock.getsockname()[1], stun_host=server[0], stun_port=server[1]
                )
            outcome["nat_type"] = str(nat_type)
            if isinstance(info, dict) and info.get("ExternalIP"):
                outcome["external_address"] = format_address((str(info["ExternalIP"]), int(info["ExternalPort"])))
        except Exception as exc:  # pystun3 raises KeyError/ValueError on odd replies
            outcome["error"] = f"pystun3 failed: {type(exc).__name__}: {exc}"

    thread = threading.Thread(target=work, name="pystun3-nat-check", daemon=True)
    thread.start()
    thread.join(budget)
    result: dict[str, Any] = {"server": format_address(server), "nat_type": None, "external_address": None}
    if thread.is_alive():
        result["error"] = f"pystun3: no answer within {budget:.1f} s"
    else:
        result.update(outcome)
    return result


def run_nat_check(
    servers: list[Address],
    timeout: float = 3.0,
    use_pystun: bool = True,
    *,
    bind: Address = ("0.0.0.0", 0),
) -> dict[str, Any]:
    """Diagnose this host's NAT with the given STUN servers; returns a JSON-able dict.

    Everything (DNS, RFC 8489 requests, the pystun3 part) ends within ``timeout`` seconds. The pystun3
    RFC 3489 classification runs only against a server that sends OTHER-ADDRESS (one that can honour
    CHANGE-REQUEST); against any other server its answer would be meaningless.
    """
    started = time.monotonic()
    deadline = started + timeout
    notes: list[str] = []
    resolved, errors = _resolve_all(servers, deadline)
    if not servers:
        notes.append("no STUN servers given: nothing to ask")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(bind)
        local_host, local_port = sock.getsockname()[:2]
        remaining = max(0.05, deadline - time.monotonic())
        txs = _run_transactions(sock, list(dict.fromkeys(resolved.values())), remaining)
    by_address = {tx.server: tx for tx in txs}
    local_ips = {ip for ip in (_route_source(addr) for addr in resolved.values()) if ip is not None}

    answered = {tx.server: tx.result for tx in txs if tx.result is not None}
    report = NatReport.build((str(local_host), int(local_port)), list(resolved.values()), answered, local_ips)
    out = report.to_dict()
    details: list[dict[str, Any]] = []
    for server in servers:
        addr = resolved.get(server)
        tx = by_address.get(addr) if addr else None
        response = tx.response if tx else None
        attrs = response.attributes if response else {}
        details.append(
            {
                "server": format_address(server),
                "address": format_address(addr),
                "reflexive_address": format_address(tx.result if tx else None),
                "other_address": format_address(attrs.get("OTHER-ADDRESS")),
                "software": attrs.get("SOFTWARE"),
                "error": errors.get(server) or (tx.error if tx else None),
            }
        )
    out["servers"] = details
    out["dns_errors"] = [errors[server] for server in servers if server in errors]
    if not answered and out["dns_errors"] and not resolved:
        out["hole_punching"] = "unknown: no STUN server could be resolved (a DNS problem, not a UDP one)"
    if len(answered) == 1:
        notes.append("only one server answered: mapping behaviour needs two servers on different IPs")

    if use_pystun and answered:
        out["rfc3489"] = _rfc3489(txs, str(local_host), str(bind[0]), deadline)
    out["notes"] = notes
    out["elapsed_s"] = round(time.monotonic() - started, 3)
    return out


def _rfc3489(txs: list[StunTransaction], local_host: str, bind_host: str, deadline: float) -> dict[str, Any]:
    capable = next(
        (tx for tx in txs if tx.response is not None and "OTHER-ADDRESS" in tx.response.attributes), None
    )
    if capable is None:
        return {
            "skipped": "no server sent OTHER-ADDRESS, so none honours CHANGE-REQUEST: an RFC 3489 type"
            " (pystun3) would be meaningless ('Blocked', 'Full Cone' or 'Open Internet' whatever the NAT)"
        }
    budget = deadline - time.monotonic()
    if budget < MIN_PYSTUN_BUDGET:
        return {"skipped": "no time left within --timeout for the RFC 3489 tests"}
    source_ip = _route_source(capable.server) or local_host
    rfc3489 = _pystun_classify(capable.server, source_ip, bind_host, budget)
    rfc3489["notes"] = _pystun_notes(capable, rfc3489)
    return rfc3489


def _pystun_notes(tx: StunTransaction, rfc3489: dict[str, Any]) -> list[str]:
    notes = ["pystun3 speaks classic RFC 3489 from its own socket: its mapping is not that of the node's socket"]
    if tx.response is not None and "OTHER-ADDRESS" not in tx.response.attributes:
        notes.append(
            "this server sends no OTHER-ADDRESS, so it probably ignores CHANGE-REQUEST: the RFC 3489 type is"
            " not meaningful (pystun3 then reports 'Full Cone' or 'Open Internet' whatever the NAT)"
        )
    if rfc3489.get("nat_type") == "Blocked" and tx.result is not None:
        notes.append(
            "'Blocked' is wrong here: the server answered RFC 8489 requests but not pystun3's cookie-less"
            " RFC 3489 ones (RFC 8489-only servers, kachery-p2p relays among them, drop those)"
        )
    return notes


def format_summary(report: dict[str, Any]) -> str:
    """The report for a person: what works, the addresses, and what it means for connections."""
    asked, answered = report.get("servers_asked", []), report.get("servers_answered", {})
    lines: list[str] = []
    if report.get("udp_works"):
        lines.append(f"UDP: works ({len(answered)} of {len(report.get('servers', []))} STUN servers answered)")
    elif report.get("dns_errors") and not asked:
        lines.append("UDP: not tested: no STUN server name could be resolved (DNS)")
    else:
        lines.append("UDP: no STUN server answered: UDP may be blocked here, or the servers are down")
    lines.append(f"Local address: {report.get('local_address') or '-'}")
    lines.append(f"Public address: {report.get('reflexive_address') or '-'}")
    lines.append(f"Mapping: {report.get('mapping')}")
    lines.append(f"Hole punching: {report.get('hole_punching')}")
    lines.append("Servers:")
    for server in report.get("servers", []):
        if server.get("reflexive_address"):
            software = f" ({server['software']})" if server.get("software") else ""
            lines.append(f"  {server['server']}: sees us as {server['reflexive_address']}{software}")
        else:
            lines.append(f"  {server['server']}: {server.get('error') or 'no answer'}")
    rfc3489 = report.get("rfc3489")
    if isinstance(rfc3489, dict):
        if rfc3489.get("skipped"):
            lines.append(f"RFC 3489 type (pystun3): skipped: {rfc3489['skipped']}")
        else:
            lines.append(f"RFC 3489 type (pystun3): {rfc3489.get('nat_type') or rfc3489.get('error')}")
    daemon = report.get("daemon")
    if isinstance(daemon, dict):
        candidates = ", ".join(str(c) for c in daemon.get("candidates") or []) or "-"
        lines.append(f"Daemon candidates: {candidates}")
        lines.extend(_relay_transport_lines(daemon.get("relayTransports") or []))
    else:
        lines.append("Relay transport: no daemon running here (a daemon reaches relays over UDP, and over"
                     " TLS/TCP by itself when UDP gets no answer)")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    lines.append(f"Took {report.get('elapsed_s', 0):.2f} s")
    return "\n".join(lines)


def _relay_transport_lines(transports: list[Any]) -> list[str]:
    """How the running daemon reaches each bootstrap relay (``relayTransports`` of node-info) and why."""
    if not transports:
        return ["Relay transport: UDP only (the daemon has no bootstrap relay, runs as a relay, or has"
                " --no-relay-tcp)"]
    lines = []
    for item in transports:
        if not isinstance(item, dict):
            continue
        kind = "TLS/TCP" if item.get("transport") == "tcp" else "UDP"
        lines.append(f"Relay transport: {item.get('relay')} over {kind} ({item.get('why')})")
    return lines
