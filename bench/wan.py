"""(h) WAN paths: daemon-to-daemon load vs kernel TCP (HTTP + curl) over an emulated 100 Mbit/s path with
20 and 80 ms RTT and 0, 0.5 and 2% random loss, and a fairness row (ours and one curl download sharing
the link). Needs root.

The path is tests/netns/wan.py: hosts A and B joined through a router namespace that drops packets at
random (iptables statistic, each direction), delays every packet RTT/2 each way (nfq_delay.py, an
NFQUEUE delay line) and limits each direction to the rate with tbf (queue: one bandwidth-delay product);
offloads are off, so every packet is MTU-sized (1500). Kernel TCP is whatever the machine's default
congestion control is (``net.ipv4.tcp_congestion_control``, reported), with no cached per-destination
metrics between runs.

For each path, in the same run: ``curl`` in B downloads the file from ``python -m http.server`` in A
(kernel TCP), then fresh daemons in A and B (B bootstrapped to A, one channel: a new QUIC connection, as
curl's is a new TCP connection) and B times ``kachery-p2p load --json URI`` of a new file of the same size
stored in A. Figure = size / wall clock of each command, timed alike from outside (ours includes the CLI
start and the provider search, curl's its start and connection; curl's own total is ``tcp_curl_seconds``;
``found_ms`` is when ours had found A; ``transfer_mb_s`` and ``tcp_transfer_mb_s`` are first byte to last).
Fairness: curl in B downloads from A (a server that sends until curl goes, so it outlasts ours); one second
later B loads ours; both rates are taken over the time ours was transferring (from its first byte to done).
Target: neither flow below a third of the link.

    .venv/bin/python -m bench wan [--mib 40] [--quick] [--rtts 20,80] [--losses 0,0.005,0.02] [--no-fair]
                                 [--cc reno,bbr]
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    bench_parser,
    cpu_seconds,
    patched_environ,
    pick_mib,
    report,
    sha1_file,
    skip,
    write_payload,
)
from bench.netlab import lab_load, lab_modules, log_tail, netns_skip_reason, start_lan_node, wait_for_channel_peer

NAME = "wan"
MIB = 1 << 20
HTTP_PORT = 8080
CC_ENV = "KACHERY_P2P_CONGESTION_CONTROL"  # the daemon's congestion controller (reno, cubic, bbr)


def _wan_module() -> Any:
    lab_modules()  # puts tests/netns on sys.path
    import wan

    return wan


def kernel_cc(host: Any = None) -> str:
    """The kernel TCP congestion control (in ``host``'s namespace when given: the sysctl is per namespace)."""
    if host is not None:
        done = host.run(["sysctl", "-n", "net.ipv4.tcp_congestion_control"], capture_output=True, text=True)
        return done.stdout.strip() or "?"
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "?"


def start_http(host: Any, directory: Path) -> subprocess.Popen[bytes]:
    """``python -m http.server`` in ``host`` serving ``directory``; returns once it accepts connections."""
    proc: subprocess.Popen[bytes] = host.popen(
        [sys.executable, "-m", "http.server", "--bind", host.ip, str(HTTP_PORT), "--directory", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = [sys.executable, "-c", f"import socket; socket.create_connection(('{host.ip}', {HTTP_PORT}), 1).close()"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("http.server exited at start")
        if host.run(probe, capture_output=True, timeout=10).returncode == 0:
            return proc
        time.sleep(0.1)
    raise RuntimeError("http.server did not accept connections within 15 s")


def curl(host: Any, url: str, timeout: float, out: str = "/dev/null") -> dict[str, float]:
    """Download ``url`` with curl inside ``host``: size, seconds (the command's wall clock from outside, as
    ours is timed: process start-up included), curl's own total, and the first-to-last-byte rate."""
    fmt = "%{size_download} %{time_total} %{time_starttransfer}"
    argv = ["curl", "-sS", "--max-time", f"{timeout:g}", "-o", out, "-w", fmt, url]
    started = time.monotonic()
    proc = host.run(argv, capture_output=True, text=True, timeout=timeout + 10)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"curl {url} failed ({proc.returncode}): {proc.stderr.strip()}")
    size, total, start = (float(x) for x in proc.stdout.split())
    rate = size / 1e6 / max(1e-9, total - start)
    return {"bytes": size, "seconds": wall, "curl_seconds": total, "transfer_mb_s": rate}


def start_pair(lab: Any, path: Any, work: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Fresh daemons on A and B (B dials A), both in channel "bench"; (a, b, B's view of A as a peer)."""
    a = start_lan_node(lab, path.a, work / "a", "a")
    b = start_lan_node(lab, path.b, work / "b", "b", bootstrap=path.a)
    for node in (a, b):
        node.cli("join-channel", "bench")
    peer = wait_for_channel_peer(b, a.info()["nodeId"])
    return a, b, peer


def stop_pair(*nodes: Any) -> None:
    for node in nodes:
        node.proc.terminate()
    for node in nodes:
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(5)


def our_load(
    lab: Any, path: Any, work: Path, mib: int, cap: float, what: str, before_load: Any = None
) -> tuple[Any, tuple[float, float]]:
    """Fresh daemons, A stores ``mib`` MiB, B loads it; the LoadRun (sha1 checked) and the CPU seconds the
    sender and the receiver daemon used during the load. ``before_load()`` runs
    just before the load starts (the fairness row starts curl there)."""
    a, b, _ = start_pair(lab, path, work)
    try:
        source = work / "payload.bin"
        sha1 = write_payload(source, mib)
        uri = a.cli("store", str(source)).stdout.strip()
        os.unlink(source)
        if before_load is not None:
            before_load()
        cpu0 = (cpu_seconds(a.proc.pid), cpu_seconds(b.proc.pid))
        load = lab_load(b, uri, cap)
        cpu = (cpu_seconds(a.proc.pid) - cpu0[0], cpu_seconds(b.proc.pid) - cpu0[1])  # (sender, receiver)
        if not load.timed_out and (not load.ok or sha1_file(load.path or "") != sha1):
            raise RuntimeError(
                f"{what}: load failed: rc={load.rc} bytes={load.bytes_loaded}\n{load.stderr}\n"
                f"--- receiver log\n{log_tail(b)}\n--- sender log\n{log_tail(a)}"
            )
        return load, cpu
    finally:
        stop_pair(a, b)


def controller(cc: str | None) -> Any:
    """Daemons started inside the block use congestion controller ``cc`` (None: the daemon's default)."""
    return patched_environ({CC_ENV: cc}, [CC_ENV]) if cc else contextlib.nullcontext()


def path_rows(lab: Any, path: Any, work: Path, mib: int, cap: float, ccs: list[str | None]) -> list[dict[str, Any]]:
    """One kernel TCP download, then ours once per controller in ``ccs``: one result per controller."""
    label = f"rtt {path.rtt_ms:g} ms, loss {path.loss * 100:g}%"
    drops0 = path.queue_drops()
    tcp = curl(path.b, f"http://{path.a.ip}:{HTTP_PORT}/file.bin", cap)
    tcp_mb_s = tcp["bytes"] / 1e6 / tcp["seconds"]
    tcp_drops = path.queue_drops() - drops0
    rows = []
    for cc in ccs:
        drops1, dcpu0 = path.queue_drops(), path.delayer_cpu_seconds()
        with controller(cc):
            where = work / f"r{int(path.rtt_ms)}-{path.loss:g}-{cc or 'default'}"
            load, cpu = our_load(lab, path, where, mib, cap, label)
        drops2, dcpu1 = path.queue_drops(), path.delayer_cpu_seconds()
        got = mib * MIB if not load.timed_out else load.bytes_loaded
        transfer = load.transfer_seconds()
        ours_transfer = got / 1e6 / transfer if transfer else None
        rows.append(report(
            f"{NAME} {label}" + (f" [{cc}]" if cc else ""),
            got / 1e6 / load.elapsed,
            "MB/s",
            tcp_mb_s,
            target="ratio>=1.0",
            baseline_is=f"kernel TCP ({kernel_cc(path.a)}) http.server+curl (wall clock, as ours), same path, same run",
            config=f"{mib} MiB, {path.mbit:g} Mbit/s tbf, RTT {path.rtt_ms:g} ms, {path.loss * 100:g}% loss each way"
            + (f", CAPPED at {cap:g} s" if load.timed_out else ""),
            controller=cc or "default",
            seconds=round(load.elapsed, 2),
            tcp_seconds=round(tcp["seconds"], 2),
            tcp_curl_seconds=round(tcp["curl_seconds"], 2),
            ttfb_ms=round((load.first_byte or 0) * 1000, 1),
            found_ms=round((load.first_line or 0) * 1000, 1),  # the command started, searched, found A
            transfer_mb_s=round(ours_transfer, 2) if ours_transfer else None,
            tcp_transfer_mb_s=round(tcp["transfer_mb_s"], 2),
            transfer_ratio=round(ours_transfer / tcp["transfer_mb_s"], 2) if ours_transfer else None,
            capped=load.timed_out,
            cpu_s_sender=round(cpu[0], 2),
            cpu_s_receiver=round(cpu[1], 2),
            queue_drops=drops2 - drops1,
            tcp_queue_drops=tcp_drops,
            delayer_cpu_s=round(sum(dcpu1) - sum(dcpu0), 2),
            delay_line_drops=path.delay_line_drops(),
        ))
    return rows


# An HTTP/1.0 server whose one URL never ends (random bytes until the client goes): the competing download
# of the fairness row lasts as long as ours, whatever either rate is.
ENDLESS_SERVER = """
import os, socket, socketserver, sys
BLOCK = os.urandom(1 << 16)
CC = sys.argv[3].encode() if len(sys.argv) > 3 else b""
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        if CC:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, CC)
        while self.rfile.readline() not in (b"\\r\\n", b"\\n", b""):
            pass
        self.wfile.write(b"HTTP/1.0 200 OK\\r\\nContent-Type: application/octet-stream\\r\\n\\r\\n")
        try:
            while True:
                self.wfile.write(BLOCK)
        except OSError:
            pass
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""
ENDLESS_PORT = HTTP_PORT + 1


class ByteCounter:
    """Reads a process's stdout to the end in a thread, keeping (time, total bytes) after every read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.stream = proc.stdout
        self.samples: list[tuple[float, int]] = [(time.monotonic(), 0)]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        total = 0
        while chunk := self.stream.read1(1 << 16):  # type: ignore[attr-defined]
            total += len(chunk)
            self.samples.append((time.monotonic(), total))

    def join(self) -> None:
        self._thread.join(10)

    def at(self, t: float) -> int:
        """Bytes received by time ``t`` (the last read at or before it)."""
        return max((n for ts, n in self.samples if ts <= t), default=0)


def fairness_row(
    lab: Any, path: Any, work: Path, mib: int, cap: float, cc: str | None, tcp_cc: str = ""
) -> list[dict[str, Any]]:
    """Ours sharing the path with one endless curl download; ``tcp_cc``: that TCP flow's congestion control
    (set on the server's socket; default the kernel's)."""
    link = path.mbit * 1e6 / 8 / 1e6
    server = path.a.popen(
        [sys.executable, "-c", ENDLESS_SERVER, path.a.ip, str(ENDLESS_PORT), *([tcp_cc] if tcp_cc else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    holder: dict[str, Any] = {}

    def start_curl() -> None:
        argv = ["curl", "-sS", "--max-time", f"{cap + 30:g}", "--retry", "5", "--retry-connrefused",
                "--retry-delay", "1", "-o", "-", f"http://{path.a.ip}:{ENDLESS_PORT}/"]
        proc = path.b.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        holder["proc"], holder["count"] = proc, ByteCounter(proc)
        time.sleep(1.0)  # the TCP flow is up to speed when ours starts

    throughout = False
    try:
        with controller(cc):
            load, cpu = our_load(lab, path, work / f"fair-{cc or 'default'}", mib, cap, "fairness", start_curl)
        throughout = holder["proc"].poll() is None  # curl still downloading when ours ended: the window is shared
    finally:
        for proc in (holder.get("proc"), server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if "count" in holder:
            holder["count"].join()
    if load.first_byte is None:
        raise RuntimeError(f"fairness: our load got no byte within {cap:g} s")
    # a capped load counts what it had reached when it was stopped
    transfer = load.transfer_seconds() or (load.elapsed - load.first_byte)
    got = mib * MIB if not load.timed_out else load.bytes_loaded
    t0 = load.started + load.first_byte
    counter: ByteCounter = holder["count"]
    tcp_mb_s = (counter.at(t0 + transfer) - counter.at(t0)) / 1e6 / transfer
    ours = got / 1e6 / transfer
    config = f"{mib} MiB ours vs one curl download, {path.mbit:g} Mbit/s, RTT {path.rtt_ms:g} ms, loss {path.loss:g}"
    config += f", CAPPED at {cap:g} s" if load.timed_out else ""
    common = {"baseline_is": f"link rate {path.mbit:g} Mbit/s", "target": "ratio>=0.333", "config": config}
    tag = f" [{cc}]" if cc else ""
    cpu_s = {"cpu_s_sender": round(cpu[0], 2), "cpu_s_receiver": round(cpu[1], 2)}
    return [
        report(f"{NAME} fair: ours{tag}", ours, "MB/s", link, **common, seconds=round(transfer, 2), **cpu_s),
        report(f"{NAME} fair: kernel TCP ({tcp_cc or kernel_cc(path.a)}){tag}", tcp_mb_s, "MB/s", link, **common,
               tcp_ran_throughout=throughout),
    ]


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(40, 12))
    parser.add_argument("--rtts", default="20,80", help="round-trip times in ms (default 20,80)")
    parser.add_argument("--losses", default="0,0.005,0.02", help="loss probabilities each way (default 0,0.005,0.02)")
    parser.add_argument("--mbit", type=float, default=100.0, help="path rate in Mbit/s each way (default 100)")
    parser.add_argument("--fair-rtt", type=float, default=20.0, help="RTT of the fairness row in ms (default 20)")
    parser.add_argument("--no-fair", action="store_true", help="leave out the fairness row")
    parser.add_argument("--no-paths", action="store_true", help="only the fairness row")
    parser.add_argument("--cc", default="", help="congestion controllers of ours, each its own row, e.g. reno,bbr "
                        f"(sets {CC_ENV} for the daemons; default: the daemon's own choice)")
    parser.add_argument("--tcp-cc", default="", help="congestion control of the fairness row's TCP flow (set on "
                        "its server's socket), e.g. cubic; default: the kernel's, bbr here")
    parser.add_argument("--timeout", type=float, default=None, help="cap per transfer in s (default 120, --quick 30)")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 40, 12)
    cap = args.timeout or (30.0 if args.quick else 120.0)
    rtts = [float(x) for x in args.rtts.split(",") if x.strip()]
    losses = [float(x) for x in args.losses.split(",") if x.strip()]
    ccs: list[str | None] = [x.strip() for x in args.cc.split(",") if x.strip()] or [None]
    reason = netns_skip_reason()
    if reason:
        return [skip(NAME, reason)]
    lab_mod, _ = lab_modules()
    wan = _wan_module()
    ok, why = wan.wan_available()
    if not ok:
        return [skip(NAME, why)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-wan-") as tmp, lab_mod.Lab() as lab:
        work, web = Path(tmp), Path(tmp) / "web"
        web.mkdir()
        write_payload(web / "file.bin", mib)
        path = wan.WanPath(lab, rtt_ms=rtts[0] if rtts else args.fair_rtt, loss=0.0, mbit=args.mbit)
        try:
            start_http(path.a, web)
            if not args.no_paths:
                for rtt in rtts:
                    for loss in losses:
                        path.set(rtt_ms=rtt, loss=loss)
                        results.extend(path_rows(lab, path, work, mib, cap, ccs))
            if not args.no_fair:
                path.set(rtt_ms=args.fair_rtt, loss=0.0)
                for cc in ccs:
                    results.extend(fairness_row(lab, path, work, mib, cap, cc, args.tcp_cc))
        finally:
            path.close()
    return results
