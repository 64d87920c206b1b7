"""A NAT lab in Linux network namespaces: a public "internet" segment and hosts behind real iptables NATs.

Needs root, ``ip`` (iproute2), ``iptables`` (nft backend preferred) and, for ``set_rate``, ``tc``.
Nothing is ever created in the host's root namespace: every interface is created directly inside one of
the lab's own namespaces (``ip -n NS link add ... peer ... netns OTHER``), every address used
(203.0.113.0/24 TEST-NET-3 for the public segment, 192.168.N.0/24 for each LAN) exists only inside them,
and the public namespace has no link to the outside, so traffic to any other address is dropped there.

Topology::

    host ns "<p>-h-<name>" (eth0 192.168.N.2) --veth-- "<p>-r-<name>" NAT router (lan 192.168.N.1, wan 203.0.113.X)
                                                              |
    public ns "<p>-pub": bridge "<p>br" (203.0.113.1) --------+-------- public host "<p>-h-<name>" (eth0 203.0.113.Y)

NAT types (RFC 4787 terms), all with FORWARD policy DROP, lan->wan accepted, wan->lan only for
ESTABLISHED,RELATED (plus DNAT'd packets for the cone types), and on the router's INPUT chain
``-i wan -m conntrack --ctstate NEW -j DROP`` (without it an early inbound punch packet leaves a conntrack
entry for the router itself and the host's next outbound packet gets a *different* port):

  ``none``            the host sits on the public segment itself (public_ip == ip).
  ``port-restricted`` MASQUERADE (Linux keeps the source port when it can): endpoint-independent mapping,
                      address- and port-dependent filtering.
  ``restricted``      MASQUERADE + DNAT of inbound UDP 1024-65535 to the host, but only from IP addresses the host
                      has sent to (``-m recent``): EIM, address-dependent filtering.
  ``full-cone``       MASQUERADE + DNAT of inbound UDP 1024-65535 to the host: EIM, endpoint-independent filtering.
                      (Slightly more open than a real full cone: a port the host never used is forwarded too.)
  ``symmetric``       MASQUERADE --random-fully: a new random public port for every destination ip:port.

Usage::

    with Lab() as lab:
        relay = lab.add_public_host("relay")
        a = lab.add_natted_host("a", "port-restricted")
        proc = relay.popen([sys.executable, "-c", "..."])
        out = a.run([sys.executable, "-c", "..."], capture_output=True, text=True, timeout=10)
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

NAT_TYPES = ("none", "port-restricted", "restricted", "full-cone", "symmetric")
PUBLIC_NET = ipaddress.ip_network("203.0.113.0/24")
PUBLIC_GW = "203.0.113.1"  # the bridge's own address in the public namespace: a dead end, never forwarded
CONE_PORTS = "1024:65535"  # UDP ports forwarded to the host by full-cone / restricted NATs
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
Direction = Literal["both", "in", "out"]


class LabError(RuntimeError):
    pass


def _iptables_binary() -> str | None:
    """iptables-nft if installed (the backend measured in nat-lab.md), else whatever ``iptables`` is."""
    return shutil.which("iptables-nft") or shutil.which("iptables")


def _sh(argv: Sequence[str], check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _list_netns() -> list[str]:
    out = _sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def netns_available() -> tuple[bool, str]:
    """(True, "") when this process can build a Lab, else (False, why). Cached: it creates a probe namespace."""
    if not hasattr(os, "geteuid") or os.uname().sysname != "Linux":
        return False, "network-namespace tests need Linux"
    if os.geteuid() != 0:
        return False, "network-namespace tests need root (run as root, as CI does)"
    if shutil.which("ip") is None:
        return False, "network-namespace tests need iproute2 ('ip' not found)"
    ipt = _iptables_binary()
    if ipt is None:
        return False, "network-namespace tests need iptables: apt-get install -y iptables"
    ns = f"kpchk{secrets.token_hex(2)}"
    try:
        if (r := _sh(["ip", "netns", "add", ns], check=False)).returncode != 0:
            return False, f"'ip netns add' failed: {r.stderr.strip()}"
        checks = [
            ["ip", "-n", ns, "link", "add", "br0", "type", "bridge"],
            ["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            ["ip", "netns", "exec", ns, ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "v0", "-j", "MASQUERADE",
             "--random-fully"],
            ["ip", "netns", "exec", ns, ipt, "-t", "mangle", "-A", "POSTROUTING", "-o", "v0", "-m", "statistic",
             "--mode", "random", "--probability", "0.5", "-j", "DROP"],
            ["ip", "netns", "exec", ns, ipt, "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
        ]
        for argv in checks:
            r = _sh(argv, check=False)
            if r.returncode != 0:
                return False, f"{' '.join(argv[3:] if argv[1] == 'netns' else argv)} failed: {r.stderr.strip()}"
    finally:
        _sh(["ip", "netns", "del", ns], check=False)
    return True, ""


@dataclass
class Host:
    """One end host in its own namespace. ``ip`` is its own address, ``public_ip`` what the internet sees."""

    name: str
    ns: str
    ip: str
    public_ip: str
    nat: str
    lab: Lab
    router_ns: str | None = None  # the NAT router's namespace (None for public hosts)
    bridge_port: str = ""  # this host's (or its router's) port on the public bridge
    lan_net: str | None = None

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside this namespace (the environment is passed through; kw as for subprocess.run)."""
        return subprocess.run(self.exec_argv(argv), **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen inside this namespace, in a new session; the lab ends it at teardown if still running."""
        return self.lab._popen(self, argv, **kw)


class Lab:
    """Builds the topology on demand; ``close()`` (or leaving the ``with``) removes every part of it."""

    def __init__(self, prefix: str | None = None, stop_timeout: float = 5.0) -> None:
        """``prefix`` names every namespace and bridge port (default "kp" + 4 random hex digits); processes started
        with ``Host.popen`` get ``stop_timeout`` seconds after SIGTERM at teardown before SIGKILL."""
        self.stop_timeout = stop_timeout
        self.prefix = prefix or f"kp{secrets.token_hex(2)}"
        if not re.fullmatch(r"[a-z0-9]{2,8}", self.prefix):
            raise ValueError(f"bad prefix {self.prefix!r}")
        self.iptables = _iptables_binary() or "iptables"
        self.public_ns = f"{self.prefix}-pub"
        self.bridge = f"{self.prefix}br"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._next_public = 10
        self._next_lan = 1
        self._next_port = 0
        self._used_public: set[str] = set()
        self._closed = False
        self.killed: list[int] = []  # PIDs that needed SIGKILL at teardown
        try:
            self._add_ns(self.public_ns)
            self._ip(self.public_ns, "link", "add", self.bridge, "type", "bridge")
            self._ip(self.public_ns, "addr", "add", f"{PUBLIC_GW}/24", "dev", self.bridge)
            self._ip(self.public_ns, "link", "set", self.bridge, "up")
            self._sysctl(self.public_ns, "net.ipv4.ip_forward", "0")  # a dead end, whatever the host's setting
        except BaseException:
            self.close()
            raise

    # -- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low-level helpers -------------------------------------------------------------------------
    def _ip(self, ns: str, *args: str) -> None:
        _sh(["ip", "-n", ns, *args])

    def _nsexec(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh(["ip", "netns", "exec", ns, *argv], check=check)

    def _ipt(self, ns: str, *args: str) -> None:
        self._nsexec(ns, self.iptables, "-w", *args)

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        self._nsexec(ns, "sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}")

    def _add_ns(self, ns: str) -> None:
        if self._closed:
            raise LabError("lab is closed")
        _sh(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._ip(ns, "link", "set", "lo", "up")

    def _alloc_public(self) -> str:
        while True:
            if self._next_public > 250:
                raise LabError("out of public addresses")
            addr = str(PUBLIC_NET.network_address + self._next_public)
            self._next_public += 1
            if addr not in self._used_public:
                self._used_public.add(addr)
                return addr

    def _new_bridge_port(self) -> str:
        self._next_port += 1
        return f"{self.prefix}p{self._next_port}"

    def _plug_into_bridge(self, ns: str, ifname: str, addr: str) -> str:
        """A veth from ``ns`` (named ifname, with addr/24) to a new port of the public bridge; the port's name."""
        port = self._new_bridge_port()
        self._ip(ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", self.public_ns)
        self._ip(self.public_ns, "link", "set", port, "master", self.bridge)
        self._ip(self.public_ns, "link", "set", port, "up")
        self._ip(ns, "addr", "add", f"{addr}/24", "dev", ifname)
        self._ip(ns, "link", "set", ifname, "up")
        self._ip(ns, "route", "add", "default", "via", PUBLIC_GW)
        return port

    def _check_name(self, name: str) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"host name {name!r}: 1-12 chars, [a-z0-9], starting with a letter")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")

    # -- building --------------------------------------------------------------------------------
    def add_public_host(self, name: str) -> Host:
        """A host directly on the public segment (relay, STUN server, or a node with no NAT)."""
        self._check_name(name)
        ns = f"{self.prefix}-h-{name}"
        self._add_ns(ns)
        addr = self._alloc_public()
        port = self._plug_into_bridge(ns, "eth0", addr)
        host = Host(name, ns, addr, addr, "none", self, bridge_port=port)
        self.hosts[name] = host
        return host

    def add_natted_host(self, name: str, nat: str) -> Host:
        """A host on its own LAN behind its own NAT router of type ``nat`` (see NAT_TYPES; "none" = public host)."""
        if nat not in NAT_TYPES:
            raise ValueError(f"nat must be one of {NAT_TYPES}, not {nat!r}")
        if nat == "none":
            return self.add_public_host(name)
        self._check_name(name)
        ns, rns = f"{self.prefix}-h-{name}", f"{self.prefix}-r-{name}"
        n = self._next_lan
        self._next_lan += 1
        lan_net, rtr_ip, host_ip = f"192.168.{n}.0/24", f"192.168.{n}.1", f"192.168.{n}.2"
        self._add_ns(rns)
        self._add_ns(ns)
        wan_ip = self._alloc_public()
        port = self._plug_into_bridge(rns, "wan", wan_ip)
        self._ip(rns, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip(rns, "addr", "add", f"{rtr_ip}/24", "dev", "lan")
        self._ip(rns, "link", "set", "lan", "up")
        self._ip(ns, "addr", "add", f"{host_ip}/24", "dev", "eth0")
        self._ip(ns, "link", "set", "eth0", "up")
        self._ip(ns, "route", "add", "default", "via", rtr_ip)

        self._sysctl(rns, "net.ipv4.ip_forward", "1")
        ipt = functools.partial(self._ipt, rns)
        ipt("-P", "FORWARD", "DROP")
        # restricted cone: remember every IP the host sends to; only those may open new inbound flows (below)
        remember = ["-m", "recent", "--name", "kpdst", "--rdest", "--set"] if nat == "restricted" else []
        ipt("-A", "FORWARD", "-i", "lan", "-o", "wan", *remember, "-j", "ACCEPT")
        ipt("-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
            "-j", "ACCEPT")
        # The conntrack gotcha (nat-lab.md): never let an unsolicited inbound packet become a local conntrack entry.
        ipt("-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
        if nat == "symmetric":
            ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE", "--random-fully")
        else:
            ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
        if nat in ("full-cone", "restricted"):
            match = ["-m", "recent", "--name", "kpdst", "--rsource", "--rcheck"] if nat == "restricted" else []
            ipt("-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "--dport", CONE_PORTS, *match,
                "-j", "DNAT", "--to-destination", host_ip)
            ipt("-A", "FORWARD", "-i", "wan", "-o", "lan", "-p", "udp", "-d", host_ip, "-m", "conntrack",
                "--ctstate", "DNAT", "-j", "ACCEPT")
        host = Host(name, ns, host_ip, wan_ip, nat, self, router_ns=rns, bridge_port=port, lan_net=lan_net)
        self.hosts[name] = host
        return host

    def add_address(self, host: Host) -> str:
        """A second public address on a public host's interface (a floating or failover IP); returns it.

        The host's primary address (``host.ip``) stays the kernel's choice for traffic it starts itself."""
        if host.router_ns:
            raise ValueError("add_address is for public hosts")
        addr = self._alloc_public()
        self._ip(host.ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        return addr

    # -- impairments -----------------------------------------------------------------------------
    def _edge(self, host: Host) -> tuple[str, str]:
        """(namespace, interface) where the host meets the internet: the NAT's wan, or a public host's eth0."""
        return (host.router_ns, "wan") if host.router_ns else (host.ns, "eth0")

    def set_loss(self, host: Host, probability: float, direction: Direction = "both") -> None:
        """Drop packets at random between ``host`` and the internet (iptables ``statistic``; replaces earlier loss).

        ``out`` = packets leaving towards the internet, ``in`` = packets arriving from it. 0 removes the loss.
        Inbound drops happen in the raw table (before conntrack), outbound in mangle POSTROUTING (before NAT).
        """
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        ns, ifname = self._edge(host)
        for table, chain, hook, flag, applies in (
            ("raw", "KPLOSSIN", "PREROUTING", "-i", direction in ("both", "in")),
            ("mangle", "KPLOSSOUT", "POSTROUTING", "-o", direction in ("both", "out")),
        ):
            exists = self._nsexec(ns, self.iptables, "-w", "-t", table, "-L", chain, "-n", check=False).returncode == 0
            if not exists:
                self._ipt(ns, "-t", table, "-N", chain)
                self._ipt(ns, "-t", table, "-A", hook, flag, ifname, "-j", chain)
            self._ipt(ns, "-t", table, "-F", chain)
            if applies and probability > 0:
                self._ipt(ns, "-t", table, "-A", chain, "-m", "statistic", "--mode", "random", "--probability",
                          f"{probability:.6f}", "-j", "DROP")

    def set_rate(self, host: Host, mbit: float | None) -> None:
        """Limit ``host``'s link to ``mbit`` Mbit/s in each direction with ``tc tbf`` (None removes the limit).

        Upload is shaped on the egress of the NAT's wan (a public host's eth0), download on the egress of the
        NAT's lan (a public host's bridge port), so both directions are limited without ingress shaping.
        """
        if host.router_ns:
            egress = [(host.router_ns, "wan"), (host.router_ns, "lan")]
        else:
            egress = [(host.ns, "eth0"), (self.public_ns, host.bridge_port)]
        for ns, dev in egress:
            if mbit is None:
                _sh(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
                continue
            if mbit <= 0:
                raise ValueError("mbit must be > 0")
            burst = max(16_000, int(mbit * 1e6 / 8 / 100))  # at least 10 ms worth of bytes (> rate/HZ)
            self._nsexec(ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
                         "burst", str(burst), "latency", "100ms")

    def move_host(self, host: Host) -> str:
        """Give ``host`` a new public address, as when a laptop changes networks; returns the new public IP.

        For a natted host the NAT router's wan address is replaced (flush + add): removing the old address makes
        the kernel drop every MASQUERADE conntrack entry that used it, so existing flows are cut and the next
        outbound packet gets a fresh mapping on the new address; the host's private address and its sockets
        stay as they are. For a public host its own eth0 address is replaced (``ip`` and ``public_ip`` change;
        sockets bound to 0.0.0.0 keep working, ones bound to the old address do not). The old address is not
        reused within this lab, so packets still sent to it are lost.
        """
        ns, ifname = self._edge(host)
        new = self._alloc_public()
        self._ip(ns, "addr", "flush", "dev", ifname)
        self._ip(ns, "addr", "add", f"{new}/24", "dev", ifname)
        self._ip(ns, "route", "replace", "default", "via", PUBLIC_GW)
        if shutil.which("conntrack"):  # belt and braces: the address removal has already dropped the entries
            _sh(["ip", "netns", "exec", ns, "conntrack", "-F"], check=False)
        host.public_ip = new
        if host.router_ns is None:
            host.ip = new
        return new

    # -- processes -------------------------------------------------------------------------------
    def _popen(self, host: Host, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        if self._closed:
            raise LabError("lab is closed")
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(host.exec_argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def _stop_procs(self, timeout: float) -> list[int]:
        """SIGTERM every running process started through popen, SIGKILL after ``timeout``; the PIDs killed."""
        running = [p for p in self._procs if p.poll() is None]
        for p in running:
            self._signal(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed: list[int] = []
        for p in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(p, signal.SIGKILL)
                p.wait(5)
                killed.append(p.pid)
        for p in self._procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        return killed

    @staticmethod
    def _signal(proc: subprocess.Popen[Any], sig: int) -> None:
        """Signal the process (and its own session's group, when it leads one) by PID."""
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass

    # -- teardown --------------------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """Namespaces (and root-namespace links, which the lab never makes) whose name starts with the prefix."""
        left = [ns for ns in _list_netns() if ns.startswith(self.prefix)]
        links = _sh(["ip", "-o", "link", "show"], check=False).stdout
        for line in links.splitlines():
            parts = line.split(":")
            if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(self.prefix):
                left.append(f"link {parts[1].strip()}")
        return left

    def close(self) -> None:
        """Stop processes, delete every namespace (which deletes their veths and bridge); raise if anything stays."""
        if self._closed:
            return
        self._closed = True
        self.killed = self._stop_procs(self.stop_timeout)
        errors: list[str] = []
        for ns in reversed(self._namespaces):
            r = _sh(["ip", "netns", "del", ns], check=False)
            if r.returncode != 0 and ns in _list_netns():
                errors.append(f"ip netns del {ns}: {r.stderr.strip()}")
        left = self.leftovers()
        if left or errors:
            raise LabError(f"lab {self.prefix} not fully removed: {left} {errors}")
