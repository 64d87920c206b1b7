"""(e) Daemon memory and idle CPU: idle RSS and CPU of a freshly started daemon; peak RSS of the receiving
daemon during a 1 GiB load from a peer on loopback, and its RSS a few seconds after.

- idle: a daemon is started alone (no peers, no LAN discovery); after 1 s, its CPU (utime + stime from
  /proc/<pid>/stat) is measured over --idle-seconds (5) and its VmRSS at the end. Baseline: the RSS of a bare
  Python process that imports what the daemon imports (aioquic, aiohttp, cryptography, uvloop, kachery_p2p).
  The same is then measured on the receiving daemon B with one connected peer.
- peak: B's VmHWM is reset (/proc/<pid>/clear_refs) just before ``kachery-p2p-load`` of N MiB (1024, --quick
  128) stored on A, and read after it (also sampled every 0.1 s). Baseline: the peak RSS of raw aioquic's
  receiving process (a) in this run (or of a 32 MiB run made now when this benchmark runs alone).
- after: B's VmRSS --settle-seconds (5) after the load ended. Baseline: B's idle RSS before the load.

    .venv/bin/python -m bench daemon-memory [--mib 1024] [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from bench import raw_aioquic
from bench.common import (
    CLK_TCK,
    RssSampler,
    bench_parser,
    idle_usage,
    measure_rss,
    pick_mib,
    report,
    reset_peak_rss,
    sha1_file,
)
from bench.daemon_transfer import load_on, store_payload
from bench.daemons import cleanup, start_daemon, wait_for_peer

NAME = "daemon-memory"
MIB = 1 << 20

_IMPORT_FLOOR = """
import kachery_p2p.daemon  # first, as in the daemon: it imports aiohttp without loading CA certificates
import aiohttp.web, aioquic.asyncio, cryptography.x509, uvloop
import kachery_p2p, kachery_p2p.cli.daemon_cmd, kachery_p2p.daemon.node
import kachery_p2p.daemon.network, kachery_p2p.daemon.control
for line in open('/proc/self/status'):
    if line.startswith('VmRSS:'):
        print(int(line.split()[1]) * 1024)
"""


def _import_floor_rss() -> float | None:
    """RSS (bytes) of a Python process that has imported the daemon's modules and does nothing else."""
    result = subprocess.run([sys.executable, "-c", _IMPORT_FLOOR], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        print(f"warning: import-floor probe failed: {result.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(result.stdout.strip())


def _resolution(args: Any) -> str:
    return f"resolution {100.0 / CLK_TCK / args.idle_seconds:.2g}%"


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(1024, 128))
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU window (default 5)")
    parser.add_argument("--settle-seconds", type=float, default=5.0, help="wait after the load (default 5)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for the load")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 1024, 128)
    results: list[dict[str, Any]] = []

    raw = raw_aioquic.any_baseline()
    if raw is None:
        raw, _ = raw_aioquic.baseline(32)  # only its receiver's peak RSS is needed
        results.append(raw)
    raw_peak = raw.get("receiver_hwm_bytes")
    floor = _import_floor_rss()

    a = start_daemon("mem-a")
    b = None
    try:
        time.sleep(1.0)
        fresh = idle_usage(a.proc.pid, args.idle_seconds)
        results.append(
            report(
                f"{NAME} idle RSS",
                fresh["rss"] / 1e6,
                "MB",
                floor / 1e6 if floor else None,
                target="value<=60",
                baseline_is="python importing the daemon's modules",
                config="fresh daemon, no peers",
            )
        )
        results.append(
            report(
                f"{NAME} idle CPU",
                fresh["cpu_pct"],
                "%",
                None,
                config=f"fresh daemon, no peers, over {args.idle_seconds:g} s ({_resolution(args)})",
            )
        )
        b = start_daemon("mem-b", ["--bootstrap", f"127.0.0.1:{a.udp_port}"])
        for daemon in (a, b):
            daemon.cli("kachery-p2p-join-channel", "bench")
        wait_for_peer(b, a.info["nodeId"])
        time.sleep(1.0)
        idle_b = idle_usage(b.proc.pid, args.idle_seconds)
        results.append(
            report(
                f"{NAME} idle RSS, 1 peer",
                idle_b["rss"] / 1e6,
                "MB",
                floor / 1e6 if floor else None,
                target="value<=60",
                baseline_is="python importing the daemon's modules",
                config="receiving daemon, 1 connected peer, before the load",
            )
        )
        results.append(
            report(
                f"{NAME} idle CPU, 1 peer",
                idle_b["cpu_pct"],
                "%",
                None,
                config=f"receiving daemon, 1 connected peer, over {args.idle_seconds:g} s ({_resolution(args)})",
            )
        )

        uri, sha1 = store_payload(a, mib)
        hwm_reset = reset_peak_rss(b.proc.pid)
        with RssSampler(b.proc.pid) as sampler:
            load = load_on(b, uri, args.timeout)
        hwm = measure_rss(b.proc.pid)["VmHWM"]
        if not load.ok:
            raise RuntimeError(
                f"load failed (rc={load.rc}, timed_out={load.timed_out}, {load.bytes_loaded} bytes): {load.stderr}"
            )
        if sha1_file(load.path or "") != sha1:
            raise RuntimeError("downloaded file has the wrong sha1")
        peak = max(hwm, sampler.peak)
        results.append(
            report(
                f"{NAME} peak RSS during load",
                peak / 1e6,
                "MB",
                raw_peak / 1e6 if raw_peak else None,
                target="value<=150",
                baseline_is=f"raw-aioquic receiver peak ({raw['config']})",
                config=f"receiving daemon, {mib} MiB load on loopback"
                + ("" if hwm_reset else ", VmHWM not reset: includes start-up"),
                load_mb_s=round(mib * MIB / 1e6 / load.elapsed, 2),
                sampled_peak_mb=round(sampler.peak / 1e6, 1),
            )
        )
        time.sleep(args.settle_seconds)
        after = measure_rss(b.proc.pid)["VmRSS"]
        results.append(
            report(
                f"{NAME} RSS after load",
                after / 1e6,
                "MB",
                idle_b["rss"] / 1e6,
                target="ratio<=1.25",
                baseline_is="same daemon idle before the load",
                config=f"{args.settle_seconds:g} s after the {mib} MiB load",
            )
        )
    finally:
        cleanup(*(d for d in (a, b) if d is not None))
    return results
