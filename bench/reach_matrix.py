"""Reach: the networks issue 11 names, each as a pair of real daemons in the NAT lab (needs root), with the path
each side reports, time to first byte and MB/s of a load in each direction.

Rows: a relay on a secondary address (port-restricted x port-restricted); symmetric x symmetric with global IPv6
behind stateful firewalls (tests/netns/lab6.py); an IPv6-only node and an IPv4-only node through a dual-stack
relay; a node whose network drops all UDP (relayed over TLS/TCP) facing a port-restricted one; a symmetric NAT
whose router runs real miniupnpd facing a symmetric one (tests/netns/upnp.py). The links are not shaped: the
figures compare paths on one machine, not networks. Last, birthday-paradox probing between a port-restricted
and a symmetric NAT (tests/netns/test_birthday_probing.py): the share of tries that go direct (theory ~64 %).

    .venv/bin/python -m bench reach [--mib 16] [--quick] [--birthday-tries 20]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, bench_parser, pick_mib, report, skip
from bench.netlab import lab_load, netns_skip_reason

sys.path.insert(0, str(REPO_ROOT / "tests" / "netns"))

NAME = "reach"
CHANNEL = "reach"


def _setup_secondary(lab: Any, work: Path) -> tuple[Any, Any]:
    from nodes import RELAY_PORT, start_node, start_relay

    relay_host = lab.add_public_host("relay")
    second = lab.add_address(relay_host)
    start_relay(lab, relay_host, work / "relay")
    hosts = lab.add_natted_host("a", "port-restricted"), lab.add_natted_host("b", "port-restricted")
    a, b = (start_node(lab, h, work / h.name, h.name, "--port", "14507", "--bootstrap", f"{second}:{RELAY_PORT}")
            for h in hosts)
    return a, b


def _setup_ipv6(lab: Any, work: Path) -> tuple[Any, Any]:
    from lab6 import add_ipv6
    from nodes import start_peer, start_relay

    relay_host = lab.add_public_host("relay")
    hosts = lab.add_natted_host("a", "symmetric"), lab.add_natted_host("b", "symmetric")
    for host in (relay_host, *hosts):
        add_ipv6(lab, host)
    start_relay(lab, relay_host, work / "relay")
    a, b = (start_peer(lab, h, work / h.name, h.name, relay_host) for h in hosts)
    return a, b


def _setup_v6_only(lab: Any, work: Path) -> tuple[Any, Any]:
    from lab6 import add_ipv6, remove_ipv4
    from nodes import RELAY_PORT, start_node, start_peer, start_relay

    relay_host = lab.add_public_host("relay")
    six, four = lab.add_natted_host("a", "port-restricted"), lab.add_natted_host("b", "port-restricted")
    relay_v6 = add_ipv6(lab, relay_host)
    add_ipv6(lab, six)
    remove_ipv4(lab, six)
    start_relay(lab, relay_host, work / "relay")
    a = start_node(lab, six, work / "a", "a", "--port", "14507", "--bootstrap", f"[{relay_v6}]:{RELAY_PORT}")
    return a, start_peer(lab, four, work / "b", "b", relay_host)


def _setup_udp_blocked(lab: Any, work: Path) -> tuple[Any, Any]:
    from nodes import start_peer, start_relay

    relay_host = lab.add_public_host("relay")
    host_a, host_b = lab.add_natted_host("a", "port-restricted"), lab.add_natted_host("b", "port-restricted")
    subprocess.run(["ip", "netns", "exec", host_a.router_ns, lab.iptables, "-w", "-I", "FORWARD", "-i", "lan", "-p",
                    "udp", "-j", "DROP"], check=True)
    start_relay(lab, relay_host, work / "relay")
    return start_peer(lab, host_a, work / "a", "a", relay_host), start_peer(lab, host_b, work / "b", "b", relay_host)


def _setup_upnp(lab: Any, work: Path) -> tuple[Any, Any]:
    from nodes import start_peer, start_relay
    from upnp import miniupnpd_available, start_miniupnpd

    if not miniupnpd_available():
        raise RuntimeError("needs miniupnpd and iptables-legacy")
    relay_host = lab.add_public_host("relay")
    host_a, host_b = lab.add_natted_host("a", "symmetric"), lab.add_natted_host("b", "symmetric")
    (work / "upnp").mkdir()
    start_miniupnpd(lab, host_a, work / "upnp", [relay_host, host_b])
    start_relay(lab, relay_host, work / "relay")
    a = start_peer(lab, host_a, work / "a", "a", relay_host, "--port-mapping")
    return a, start_peer(lab, host_b, work / "b", "b", relay_host)


ROWS: list[tuple[str, str, Callable[[Any, Path], tuple[Any, Any]]]] = [
    ("relay-secondary-address", "direct", _setup_secondary),
    ("symmetric-x-symmetric-ipv6", "direct", _setup_ipv6),
    ("ipv6-only-x-ipv4-only", "relayed", _setup_v6_only),
    ("udp-blocked-tcp-x-port-restricted", "relayed", _setup_udp_blocked),
    ("symmetric-upnp-x-symmetric", "direct", _setup_upnp),
]


def _row(label: str, expected: str, setup: Callable[[Any, Path], tuple[Any, Any]], mib: int) -> list[dict[str, Any]]:
    from lab import Lab
    from nodes import wait_until, write_random_file

    results = []
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-reach-") as tmp, Lab() as lab:
        work = Path(tmp)
        a, b = setup(lab, work)
        for node in (a, b):
            node.cli("join-channel", CHANNEL)
        ids = a.info()["nodeId"], b.info()["nodeId"]

        def path_of(node: Any, other: str) -> str | None:
            peer = node.peer(other)
            return peer.get("path") if peer and CHANNEL in peer.get("channels", []) else None

        wait_until(f"{label}: b sees a {expected}", lambda: path_of(b, ids[0]) == expected, 90)
        wait_until(f"{label}: a sees b", lambda: path_of(a, ids[1]), 30)
        sides = f"a sees {path_of(a, ids[1])}, b sees {path_of(b, ids[0])}"
        transports = [t.get("transport") for t in a.info().get("relayTransports") or []]
        for source, dest, direction in ((a, b, "a->b"), (b, a, "b->a")):
            payload = work / f"{direction.replace('->', '')}.bin"
            write_random_file(payload, mib << 20)
            uri = source.cli("store", str(payload)).stdout.strip()
            run = lab_load(dest, uri, 180)
            if not run.ok or run.done is None:
                raise RuntimeError(f"{label} {direction}: load failed: {run.stderr[-500:]}")
            ttfb = (run.first_byte or run.done) * 1000
            results.append(report(f"{NAME}-{label}-{direction}", mib * 1.048576 / run.done, "MB/s",
                                  config=f"{mib} MiB", paths=sides, ttfb_ms=round(ttfb), a_relay_transport=transports))
    return results


def _birthday(tries: int) -> dict[str, Any]:
    from lab import Lab
    from nodes import start_relay
    from test_birthday_probing import one_try

    outcomes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-birthday-") as tmp, Lab() as lab:
        work = Path(tmp)
        relays = [lab.add_public_host(f"relay{n}") for n in (1, 2)]
        for host in relays:
            start_relay(lab, host, work / host.name)
        for i in range(tries):
            try:
                outcomes.append(one_try(lab, work, relays, i)["path"])
            except Exception as exc:  # a failed try counts as not direct, and is said
                print(f"[bench] {NAME}-birthday try {i + 1}: {str(exc)[:200]}", flush=True)
                outcomes.append("failed")
    direct = outcomes.count("direct")
    return report(f"{NAME}-birthday-port-restricted-x-symmetric", 100.0 * direct / tries, "% direct",
                  config=f"{tries} tries, 256 sockets x 256 ports", direct=direct, tries=tries,
                  failed=outcomes.count("failed"))


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(16, 4))
    parser.add_argument("--birthday-tries", type=int, default=None,
                        help="birthday-probing tries (default 20, --quick 5; 0 leaves the row out)")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 16, 4)
    reason = netns_skip_reason()
    if reason:
        return [skip(NAME, reason)]
    results: list[dict[str, Any]] = []
    for label, expected, setup in ROWS:
        try:
            results.extend(_row(label, expected, setup, mib))
        except Exception as exc:  # one row failing must not hide the others
            results.append(skip(f"{NAME}-{label}", str(exc)[:300]))
    tries = args.birthday_tries if args.birthday_tries is not None else (5 if args.quick else 20)
    if tries > 0:
        try:
            results.append(_birthday(tries))
        except Exception as exc:
            results.append(skip(f"{NAME}-birthday", str(exc)[:300]))
    return results
