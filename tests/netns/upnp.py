"""A real miniupnpd (Debian's package: UPnP IGD, NAT-PMP, PCP) on a NAT router of the lab.

miniupnpd refuses to map when its external address is reserved (the lab's public segment is 203.0.113.0/24,
TEST-NET-3), so the router gets a second external address, MAPPED_IP, on its wan interface and miniupnpd is told
to use it. That address exists only inside the lab's namespaces: the lab's public segment has no link outside,
and the other hosts reach it on-link over the lab bridge. miniupnpd's iptables rules go into the legacy tables (the
Debian package links libiptc); the NAT's own rules are nft, so the router also accepts DNAT'd flows, as a real
router running miniupnpd does in its one table.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from lab import Host, Lab

MINIUPNPD = "/usr/sbin/miniupnpd"
MAPPED_IP = "192.0.3.10"
CHANNEL = "upnp"


def _legacy(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-w", *args], check=True, capture_output=True)


def _nat_rules(ns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-w", "-t", "nat", "-S", "MINIUPNPD"],
                         capture_output=True, text=True)
    return out.stdout


def start_miniupnpd(lab: Lab, host: Host, workdir: Path, others: list[Host]) -> subprocess.Popen[Any]:
    rns = host.router_ns
    assert rns is not None
    subprocess.run(["ip", "-n", rns, "addr", "add", f"{MAPPED_IP}/32", "dev", "wan"], check=True)
    for other in others:  # on-link route to the second address (the lab bridge is one L2 segment)
        ns, dev = (other.router_ns, "wan") if other.router_ns else (other.ns, "eth0")
        subprocess.run(["ip", "-n", ns, "route", "add", f"{MAPPED_IP}/32", "dev", dev], check=True)
    for table, rules in (
        ("nat", [["-N", "MINIUPNPD"], ["-I", "PREROUTING", "-i", "wan", "-j", "MINIUPNPD"],
                 ["-N", "MINIUPNPD-POSTROUTING"], ["-I", "POSTROUTING", "-o", "wan", "-j", "MINIUPNPD-POSTROUTING"]]),
        ("mangle", [["-N", "MINIUPNPD"], ["-I", "PREROUTING", "-i", "wan", "-j", "MINIUPNPD"]]),
        ("filter", [["-N", "MINIUPNPD"], ["-I", "FORWARD", "-i", "wan", "!", "-o", "wan", "-j", "MINIUPNPD"]]),
    ):
        for rule in rules:
            _legacy(rns, "-t", table, *rule)
    subprocess.run(["ip", "netns", "exec", rns, lab.iptables, "-w", "-I", "FORWARD", "-i", "wan", "-o", "lan", "-m",
                    "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"], check=True)
    conf = workdir / "miniupnpd.conf"
    conf.write_text(
        "ext_ifname=wan\n"
        f"ext_ip={MAPPED_IP}\n"
        "listening_ip=lan\n"
        "port=0\n"
        "enable_natpmp=yes\n"
        "enable_upnp=yes\n"
        "secure_mode=yes\n"
        "system_uptime=yes\n"
        f"uuid={uuid.uuid4()}\n"
        f"lease_file={workdir / 'leases'}\n"
        "allow 1024-65535 192.168.0.0/16 1024-65535\n"
        "deny 0-65535 0.0.0.0/0 0-65535\n"
    )
    log = open(workdir / "miniupnpd.log", "wb")  # noqa: SIM115 - miniupnpd writes to it while it runs
    router = Host(f"{host.name}-router", rns, "", "", "none", lab)
    return router.popen([MINIUPNPD, "-f", str(conf), "-d", "-P", str(workdir / "miniupnpd.pid")],
                        stdout=log, stderr=subprocess.STDOUT)


def miniupnpd_available() -> bool:
    return bool(shutil.which("iptables-legacy")) and Path(MINIUPNPD).exists()


def nat_rules(ns: str) -> str:
    """The DNAT rules miniupnpd keeps in the router's legacy nat table (one line per mapping)."""
    return _nat_rules(ns)
