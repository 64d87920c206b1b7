"""A WAN path for the namespace lab: two hosts joined through a router namespace that adds delay, random loss
and a rate limit, each in both directions (netem is missing from this kernel; see nfq_delay.py).

Topology (addresses from TEST-NET-1/2, which exist only inside these namespaces)::

    "<p>-h-<a>" eth0 192.0.2.2 --veth-- wa 192.0.2.1 "<p>-r-wan" wb 198.51.100.1 --veth-- eth0 198.51.100.2 "<p>-h-<b>"

In the router, every forwarded packet (either direction) passes the mangle FORWARD chain ``KPWAN``:
``statistic --mode random`` DROP for the loss, then ``NFQUEUE`` to one delayer process (nfq_delay.py) that
holds it RTT/2, then the egress qdisc of the outgoing veth: ``tbf`` at the link rate, whose queue is the
path's bottleneck buffer (default one bandwidth-delay product, at least 64 KB). A constant delay before a
FIFO rate limiter behaves as the limiter followed by the propagation delay. Offloads (TSO, GSO, UDP GSO, GRO)
are off on all four veth ends, so every packet on the path is MTU-sized (1500).

    with Lab() as lab:
        path = WanPath(lab, rtt_ms=20, loss=0.005, mbit=100)
        path.a.popen([...]); path.b.run([...])
        path.set(rtt_ms=80, loss=0.02)          # change the impairments in place
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab import Host, Lab, LabError, _iptables_binary, _sh, netns_available

HERE = Path(__file__).resolve().parent
ECHO_PORT = 7
# a UDP echo server ("server IP PORT") and client ("client IP PORT COUNT INTERVAL WAIT": one JSON line with the
# number sent and each answered probe's round-trip time in ms)
ECHO_SCRIPT = """
import json, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sys.argv[1] == "server":
    s.bind((sys.argv[2], int(sys.argv[3])))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)
addr = (sys.argv[2], int(sys.argv[3]))
count, interval, wait = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
rtts, sent, pad = {}, 0, bytes(64)
next_send = time.monotonic()
end = next_send + count * interval + wait
while time.monotonic() < end and len(rtts) < count:
    now = time.monotonic()
    if sent < count and now >= next_send:
        s.sendto(struct.pack("!Id", sent, now) + pad, addr)
        sent += 1
        next_send += interval
    until = next_send if sent < count else end
    ready, _, _ = select.select([s], [], [], max(0.0, until - time.monotonic()))
    if ready:
        data = s.recv(2048)
        seq, t = struct.unpack_from("!Id", data)
        rtts.setdefault(seq, (time.monotonic() - t) * 1000)
print(json.dumps({"sent": sent, "rtts_ms": list(rtts.values())}), flush=True)
"""
NET_A, NET_B = "192.0.2", "198.51.100"
QUEUE_NUM = 0


@functools.lru_cache(maxsize=1)
def wan_available() -> tuple[bool, str]:
    """(True, "") when this kernel has what WanPath needs beyond the NAT lab: tbf and an NFQUEUE that a
    process can bind (nfnetlink_queue); else (False, why). Probed once in a throwaway namespace."""
    ok, reason = netns_available()
    if not ok:
        return ok, reason
    ns = f"kpwan{secrets.token_hex(2)}"
    try:
        _sh(["ip", "netns", "add", ns])
        _sh(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        for argv, what in (
            (["tc", "qdisc", "add", "dev", "v0", "root", "tbf", "rate", "100mbit", "burst", "16000", "limit", "64000"],
             "tc tbf"),
            ([_iptables_binary() or "iptables", "-w", "-t", "mangle", "-A", "FORWARD", "-j", "NFQUEUE",
              "--queue-num", "0"], "iptables NFQUEUE"),
            ([sys.executable, str(HERE / "nfq_delay.py"), "--delay-ms", "1", "--probe"], "binding an NFQUEUE"),
        ):
            r = _sh(["ip", "netns", "exec", ns, *argv], check=False)
            if r.returncode != 0:
                return False, f"the WAN emulator needs {what}: {r.stderr.strip() or r.stdout.strip()}"
    except LabError as exc:
        return False, str(exc)
    finally:
        _sh(["ip", "netns", "del", ns], check=False)
    return True, ""


def offloads_off(lab: Lab, ns: str, *devs: str) -> None:
    """``ethtool -K DEV tso off gso off gro off tx-udp-segmentation off ...`` for each device in ``ns`` (offloads.py:
    through the ioctl, no ethtool binary needed)."""
    lab._nsexec(ns, sys.executable, str(HERE / "offloads.py"), *devs)


class WanPath:
    """Hosts ``a`` and ``b`` with a delayed, lossy, rate-limited path between them (see the module doc)."""

    def __init__(
        self,
        lab: Lab,
        rtt_ms: float = 20.0,
        loss: float = 0.0,
        mbit: float = 100.0,
        names: tuple[str, str] = ("wa", "wb"),
        queue_bytes: int | None = None,
        rt_priority: int = 10,
    ) -> None:
        self.lab = lab
        self.router_ns = f"{lab.prefix}-r-wan"
        self.rtt_ms, self.loss, self.mbit = rtt_ms, loss, mbit
        self.queue_bytes = queue_bytes
        self.rt_priority = rt_priority
        self.delayer: subprocess.Popen[str] | None = None
        self.delayer_stats: dict[str, Any] = {}
        lab._add_ns(self.router_ns)
        self.router = Host("wanrouter", self.router_ns, f"{NET_A}.1", f"{NET_A}.1", "router", lab)
        self.a = self._add_host(names[0], "wa", NET_A)
        self.b = self._add_host(names[1], "wb", NET_B)
        lab._sysctl(self.router_ns, "net.ipv4.ip_forward", "1")
        offloads_off(lab, self.router_ns, "wa", "wb")
        ipt = lab.iptables
        lab._nsexec(self.router_ns, ipt, "-w", "-t", "mangle", "-N", "KPWAN")
        lab._nsexec(self.router_ns, ipt, "-w", "-t", "mangle", "-A", "FORWARD", "-j", "KPWAN")
        self.set(rtt_ms, loss, mbit)

    def _add_host(self, name: str, router_if: str, net: str) -> Host:
        self.lab._check_name(name)
        ns = f"{self.lab.prefix}-h-{name}"
        self.lab._add_ns(ns)
        ip = self.lab._ip
        ip(self.router_ns, "link", "add", router_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip(self.router_ns, "addr", "add", f"{net}.1/24", "dev", router_if)
        ip(self.router_ns, "link", "set", router_if, "up")
        ip(ns, "addr", "add", f"{net}.2/24", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
        ip(ns, "route", "add", "default", "via", f"{net}.1")
        offloads_off(self.lab, ns, "eth0")
        # every TCP connection starts afresh (no ssthresh cached from an earlier, lossier run to this address)
        self.lab._sysctl(ns, "net.ipv4.tcp_no_metrics_save", "1")
        host = Host(name, ns, f"{net}.2", f"{net}.2", "none", self.lab, router_ns=None)
        self.lab.hosts[name] = host
        return host

    # -- impairments -------------------------------------------------------------------------------
    def set(self, rtt_ms: float | None = None, loss: float | None = None, mbit: float | None = None) -> None:
        """Change the path's round-trip delay (ms added, split evenly over both directions), random loss
        probability per packet per direction, and rate (Mbit/s, each direction); None keeps a setting."""
        if rtt_ms is not None and rtt_ms < 0:
            raise ValueError("rtt_ms must be >= 0")
        if loss is not None and not 0.0 <= loss < 1.0:
            raise ValueError("loss must be within [0, 1)")
        if mbit is not None and mbit <= 0:
            raise ValueError("mbit must be > 0")
        self.rtt_ms = self.rtt_ms if rtt_ms is None else rtt_ms
        self.loss = self.loss if loss is None else loss
        self.mbit = self.mbit if mbit is None else mbit
        # no packet may meet an unbound queue (it would be dropped): unhook, restart the delayer, hook again
        self.lab._nsexec(self.router_ns, self.lab.iptables, "-w", "-t", "mangle", "-F", "KPWAN")
        self._stop_delayer()
        self._shape()
        if self.rtt_ms > 0:
            self._start_delayer()
        self._rules()

    def _rules(self) -> None:
        run = self.lab._nsexec
        ipt = [self.lab.iptables, "-w", "-t", "mangle"]
        if self.loss > 0:
            run(self.router_ns, *ipt, "-A", "KPWAN", "-m", "statistic", "--mode", "random", "--probability",
                f"{self.loss:.6f}", "-j", "DROP")
        if self.rtt_ms > 0:
            run(self.router_ns, *ipt, "-A", "KPWAN", "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM))

    def bdp_bytes(self) -> int:
        return int(self.mbit * 1e6 / 8 * self.rtt_ms / 1000)

    def _shape(self) -> None:
        rate = self.mbit * 1e6 / 8
        burst = max(16_000, int(rate / 1000))  # 1 ms worth (>= rate/HZ), at least 16 KB
        limit = self.queue_bytes if self.queue_bytes is not None else max(64_000, self.bdp_bytes())
        for dev in ("wa", "wb"):
            self.lab._nsexec(self.router_ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                             f"{self.mbit}mbit", "burst", str(burst), "limit", str(limit))

    def _start_delayer(self) -> None:
        argv = [sys.executable, str(HERE / "nfq_delay.py"), "--queue", str(QUEUE_NUM),
                "--delay-ms", f"{self.rtt_ms / 2:.3f}", "--rt", str(self.rt_priority)]
        # nice -5: the delay line should not queue behind the endpoints it carries on a 2-core machine
        proc: subprocess.Popen[str] = self.router.popen(
            ["nice", "-n", "-5", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        line = proc.stdout.readline().strip() if ready else ""
        if line != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise LabError(f"nfq_delay did not start: {line!r} {err.strip()}")
        self.delayer = proc

    def _stop_delayer(self) -> None:
        proc, self.delayer = self.delayer, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                self.delayer_stats = json.loads(line)
                break

    def udp_echo(self, count: int = 50, interval: float = 0.01, wait: float | None = None) -> tuple[int, list[float]]:
        """Send ``count`` UDP probes from A to an echo server on B, ``interval`` s apart; (sent, RTTs in ms of
        those answered). Probes and answers cross the path like any packet: delayed, lossy, rate-limited."""
        wait = wait if wait is not None else 1.0 + 2 * self.rtt_ms / 1000
        server: subprocess.Popen[str] = self.b.popen(
            [sys.executable, "-c", ECHO_SCRIPT, "server", self.b.ip, str(ECHO_PORT)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            ready, _, _ = select.select([server.stdout], [], [], 10.0)
            if not ready or server.stdout.readline().strip() != "ready":
                raise LabError("UDP echo server did not start")
            argv = [sys.executable, "-c", ECHO_SCRIPT, "client", self.b.ip, str(ECHO_PORT), str(count), str(interval),
                    str(wait)]
            out = self.a.run(argv, capture_output=True, text=True, timeout=count * interval + wait + 30)
            if out.returncode != 0:
                raise LabError(f"UDP echo client failed: {out.stderr.strip()}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            return int(result["sent"]), [float(x) for x in result["rtts_ms"]]
        finally:
            server.kill()
            server.wait(5)

    def queue_drops(self) -> int:
        """Packets the bottleneck queues (tbf, both directions) have dropped since the last ``set``."""
        out = self.lab._nsexec(self.router_ns, "tc", "-s", "qdisc", "show").stdout
        return sum(int(m) for m in re.findall(r"dropped (\d+)", out))

    def delay_line_drops(self) -> int:
        """Packets the kernel's NFQUEUE dropped (queue full, or a notification it could not deliver) since the
        delayer bound the queue: 0 on a healthy emulator, whose only losses are the configured ones."""
        out = self.lab._nsexec(self.router_ns, "cat", "/proc/net/netfilter/nfnetlink_queue", check=False).stdout
        # queue_num portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
        return sum(int(f[5]) + int(f[6]) for f in (line.split() for line in out.splitlines()) if len(f) >= 7)

    def delayer_cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds the running delayer has used so far ((0, 0) when none runs). System time
        includes the kernel forwarding the packets it releases (softirq work done in its verdict syscalls)."""
        proc = self.delayer
        if proc is None or proc.poll() is not None:
            return 0.0, 0.0
        # the Popen is ``ip netns exec ... nice ... python``: exec replaces the process, so the pid is the delayer
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0, 0.0
        ticks = 100.0
        return int(fields[11]) / ticks, int(fields[12]) / ticks

    def close(self) -> None:
        self._stop_delayer()

