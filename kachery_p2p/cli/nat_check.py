"""The diagnosis behind ``kachery-p2p-nat-check`` (blocking I/O, no asyncio).

1. From ONE UDP socket, send our RFC 8489 Binding requests to every server (``StunTransaction``
   retransmission, ``select`` until the next timer) and classify the mapping (``report.classify``).
2. Optionally run pystun3's classic RFC 3489 classification against the first server, on a socket of
   its own (pystun3 crashes on foreign datagrams and would eat our answers). It blocks, so it runs in a
   daemon thread with a deadline, and it raises on odd replies: everything is caught and reported.

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


def _resolve(server: Address) -> Address:
    infos = socket.getaddrinfo(server[0], server[1], socket.AF_INET, socket.SOCK_DGRAM)
    host, port = infos[0][4][:2]
    return str(host), int(port)


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


def _pystun_classify(server: Address, source_ip: str, bind_host: str, timeout: float) -> dict[str, Any]:
    """pystun3's RFC 3489 NAT type, guarded by a deadline; never raises."""
    per_try = min(2.0, max(0.05, timeout / 4))
    deadline = PYSTUN_TESTS_WORST_CASE * per_try + 1.0
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
    thread.join(deadline)
    result: dict[str, Any] = {"server": format_address(server), "nat_type": None, "external_address": None}
    if thread.is_alive():
        result["error"] = f"pystun3: no answer within {deadline:g} s"
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

    ``timeout`` bounds the RFC 8489 part; the pystun3 part (if any) adds at most about 3 x timeout + 1 s.
    """
    started = time.monotonic()
    notes: list[str] = []
    resolved: dict[Address, Address] = {}
    errors: dict[Address, str] = {}
    for server in servers:
        try:
            resolved[server] = _resolve(server)
        except (OSError, UnicodeError) as exc:
            errors[server] = f"cannot resolve to IPv4: {exc}"
    if not servers:
        notes.append("no STUN servers given: nothing to ask")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(bind)
        local_host, local_port = sock.getsockname()[:2]
        txs = _run_transactions(sock, list(dict.fromkeys(resolved.values())), timeout)
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
    if len(answered) == 1:
        notes.append("only one server answered: mapping behaviour needs two servers on different IPs")

    if use_pystun and resolved:
        first = next((tx for tx in txs if tx.result is not None), txs[0])
        source_ip = _route_source(first.server) or str(local_host)
        rfc3489 = _pystun_classify(first.server, source_ip, str(bind[0]), timeout)
        rfc3489["notes"] = _pystun_notes(first, rfc3489)
        out["rfc3489"] = rfc3489
    out["notes"] = notes
    out["elapsed_s"] = round(time.monotonic() - started, 3)
    return out


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
