"""(c2) Daemon-to-daemon `kachery-p2p load` over a 1 Gbit/s MTU-1500 LAN pair vs kernel TCP (HTTP + curl) on the
same link in the same run, and the daemons' CPU-seconds per GB. Needs root.

Two public hosts of the NAT lab (tests/netns/lab.py) on its bridge (veths with MTU 1500, no NAT), each link
shaped to --mbit (default 1000) in both directions with tbf (``Lab.set_rate``). Baseline first: python's
http.server in A's namespace serves the payload file and curl in B's namespace downloads it (wall clock as
curl reports it, ``time_total``). Then a daemon in each namespace (B bootstrapped to A, one channel); A stores
the same N MiB and B times ``kachery-p2p load --json URI``. CPU-seconds per GB = utime + stime of each
daemon (/proc/<pid>/stat) across the load, divided by the GB moved. The receiver is the bottleneck on a
shared 2-core machine: both daemons (and curl/http.server for the baseline) share the cores.

``--profile DIR`` also runs ``py-spy record --format raw`` on both daemons during the load (py-spy must be on
PATH or in the venv; the profiler costs some throughput, so profiled figures are not the ones to report).

    .venv/bin/python -m bench lan-gbit [--mib 256] [--quick] [--mbit 1000] [--profile DIR]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CLK_TCK, bench_parser, cpu_seconds, pick_mib, report, sha1_file, skip, write_payload
from bench.netlab import (
    lab_load,
    lab_modules,
    link_mtu,
    log_tail,
    netns_skip_reason,
    start_lan_node,
    wait_for_channel_peer,
)

NAME = "lan-gbit"
MIB = 1 << 20
HTTP_PORT = 8089


def kernel_tcp(host_a: Any, host_b: Any, directory: Path, filename: str, size: int, timeout: float) -> float:
    """MB/s of ``curl`` in B downloading ``filename`` from python's http.server in A (its own timing)."""
    server = host_a.popen(
        [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", host_a.ip, "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://{host_a.ip}:{HTTP_PORT}/{filename}"
        deadline = time.monotonic() + 15
        while True:  # wait for the server to listen
            probe = host_b.run(["curl", "-s", "-o", "/dev/null", "-r", "0-0", url], timeout=10)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("http.server did not answer")
            time.sleep(0.1)
        out = host_b.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
            capture_output=True, text=True, timeout=timeout,
        )
        got, seconds = out.stdout.split()
        if int(got) != size:
            raise RuntimeError(f"curl got {got} of {size} bytes")
        return size / 1e6 / float(seconds)
    finally:
        server.kill()
        server.wait()


def tbf_drops(lab: Any, hosts: list[Any]) -> int:
    """Packets the shapers dropped so far (both directions of every host's link)."""
    total = 0
    for host in hosts:
        for ns, dev in ((host.ns, "eth0"), (lab.public_ns, host.bridge_port)):
            out = subprocess.run(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev],
                                 capture_output=True, text=True, timeout=10).stdout
            words = out.replace(",", " ").split()
            total += sum(int(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "(dropped")
    return total


def udp_errors(host: Any, field: str) -> int:
    """A UDP counter of ``host``'s namespace: RcvbufErrors (dropped for a full receive buffer), SndbufErrors."""
    out = host.run(["cat", "/proc/net/snmp"], capture_output=True, text=True, timeout=10).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("Udp:")]
    try:
        return int(rows[1][rows[0].index(field)])
    except (IndexError, ValueError):
        return -1


def system_seconds(pid: int) -> float:
    """stime of a live process (the kernel's share of ``cpu_seconds``)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[12]) / CLK_TCK


def _socket_use(before: dict[str, int], after: dict[str, int]) -> str:
    """Datagrams per wake-up of the reader and per system call of the writer, from the daemon's UDP stats."""
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    reads, received, sent = delta.get("reads", 0), delta.get("received", 0), delta.get("sent", 0)
    return (f"rx {received} in {reads} wake-ups ({received / max(1, reads):.1f} each), tx {sent} "
            f"({delta.get('gso_sends', 0)} GSO sends), {delta.get('send_errors', 0)} send errors")


def start_profiler(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        print(f"[bench] {NAME}: py-spy not found, no profile", flush=True)
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--nonblocking", "--rate", "200",
         "--duration", str(int(seconds)), "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(256, 32))
    parser.add_argument("--mbit", type=float, default=1000.0, help="link rate in Mbit/s (default 1000)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for each transfer")
    parser.add_argument("--profile", default=None, help="directory for py-spy profiles of both daemons")
    parser.add_argument("--profile-seconds", type=float, default=6.0, help="how long to profile (default 6)")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 256, 32)
    reason = netns_skip_reason()
    if reason:
        return [skip(NAME, reason)]
    if shutil.which("curl") is None:
        return [skip(NAME, "curl is not installed (the kernel TCP baseline)")]
    lab_mod, _ = lab_modules()
    results: list[dict[str, Any]] = []
    size = mib * MIB
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-gbit-") as tmp, lab_mod.Lab() as lab:
        work = Path(tmp)
        host_a, host_b = lab.add_public_host("a"), lab.add_public_host("b")
        for host in (host_a, host_b):
            lab.set_rate(host, args.mbit)
        where = f"netns veth MTU {link_mtu(host_b)}, tbf {args.mbit:g} Mbit/s each way"
        serve_dir = work / "www"
        serve_dir.mkdir()
        source = serve_dir / "payload.bin"
        sha1 = write_payload(source, mib)
        tcp_mb_s = kernel_tcp(host_a, host_b, serve_dir, source.name, size, args.timeout)
        results.append(report(f"{NAME}-kernel-tcp", tcp_mb_s, "MB/s", config=f"{mib} MiB, {where}, http.server + curl"))
        a = start_lan_node(lab, host_a, work / "a", "a")
        b = start_lan_node(lab, host_b, work / "b", "b", bootstrap=host_a)
        for node in (a, b):
            node.cli("join-channel", "bench")
        wait_for_channel_peer(b, a.info()["nodeId"])
        uri = a.cli("store", str(source)).stdout.strip()
        os.unlink(source)
        spies: list[subprocess.Popen[bytes]] = []
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            for label, node in (("receiver", b), ("sender", a)):
                spy = start_profiler(node.proc.pid, Path(args.profile) / f"{label}.txt", args.profile_seconds)
                if spy is not None:
                    spies.append(spy)
        drops_before = tbf_drops(lab, [host_a, host_b])
        counters = ("RcvbufErrors", "SndbufErrors")
        udp_before = {(h.ns, c): udp_errors(h, c) for h in (host_a, host_b) for c in counters}
        daemons = (("receiver", b), ("sender", a))
        udp_stats_before = {label: node.info().get("udp", {}) for label, node in daemons}
        cpu_before = {label: cpu_seconds(node.proc.pid) for label, node in daemons}
        sys_before = {label: system_seconds(node.proc.pid) for label, node in daemons}
        load = lab_load(b, uri, args.timeout)
        cpu = {label: cpu_seconds(node.proc.pid) - cpu_before[label] for label, node in daemons}
        kernel = {label: system_seconds(node.proc.pid) - sys_before[label] for label, node in daemons}
        socket_use = {label: _socket_use(udp_stats_before[label], node.info().get("udp", {}))
                      for label, node in daemons}
        drops = tbf_drops(lab, [host_a, host_b]) - drops_before
        udp = {(h.ns, c): udp_errors(h, c) - udp_before[(h.ns, c)] for h in (host_a, host_b) for c in counters}
        # (the counters: RcvbufErrors of the receiver's namespace, SndbufErrors of the sender's)
        for spy in spies:
            try:
                spy.wait(timeout=args.profile_seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        if not load.ok or sha1_file(load.path or "") != sha1:
            raise RuntimeError(
                f"LAN load failed: rc={load.rc} timed_out={load.timed_out} bytes={load.bytes_loaded}\n"
                f"{load.stderr}\n--- receiver log\n{log_tail(b)}\n--- sender log\n{log_tail(a)}"
            )
        transfer = load.transfer_seconds()
        gb = size / 1e9
        results.append(
            report(
                NAME,
                size / 1e6 / load.elapsed,
                "MB/s",
                tcp_mb_s,
                target="ratio>=0.5",
                baseline_is=f"kernel TCP (http.server + curl) {mib} MiB, same link",
                config=f"{mib} MiB, {where}, 2 daemons, CLI load (includes provider search)",
                seconds=round(load.elapsed, 3),
                transfer_mb_s=round(size / 1e6 / transfer, 2) if transfer else None,
                receiver_cpu_s_per_gb=round(cpu["receiver"] / gb, 2),
                sender_cpu_s_per_gb=round(cpu["sender"] / gb, 2),
                kernel_share=f"receiver {kernel['receiver'] / max(cpu['receiver'], 1e-9):.0%}, "
                f"sender {kernel['sender'] / max(cpu['sender'], 1e-9):.0%}",
                receiver_socket=socket_use["receiver"],
                sender_socket=socket_use["sender"],
                tbf_drops=drops,
                gso_refused=any("GSO refused" in node.log() for node in (a, b)),
                rcvbuf_errors_receiver=udp[(host_b.ns, "RcvbufErrors")],
                sndbuf_errors_sender=udp[(host_a.ns, "SndbufErrors")],
            )
        )
    return results
