"""(b) Daemon-to-daemon `kachery-p2p-load` of N MiB on loopback, as a ratio to raw aioquic (a) of the same run.

Two daemons on 127.0.0.1 (own temp dirs, no LAN discovery), B bootstrapped to A, both in one channel;
A stores N MiB, B runs ``kachery-p2p-load --json URI`` and the wall clock of that command is the figure
(it includes the provider search; ``transfer_mb_s`` is first byte to done). The baseline is the stock
raw-aioquic figure for the same size measured earlier in this ``python -m bench`` process, or measured
now when this benchmark runs alone.

    .venv/bin/python -m bench daemon-load [--mib 256] [--quick] [--no-baseline]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench import raw_aioquic
from bench.common import (
    bench_parser,
    measure_rss,
    pick_mib,
    report,
    sha1_file,
    timed_load,
    write_payload,
)
from bench.daemons import BenchDaemon, cleanup, start_daemon, wait_for_peer

NAME = "daemon-load"
MIB = 1 << 20
BIN_DIR = Path(sys.executable).parent


def _make_file(path: str, mib: int) -> str:
    """Kept for callers of the earlier version: write ``mib`` MiB of fresh payload, return its sha1."""
    return write_payload(path, mib)


def connected_pair(label: str = "bench") -> tuple[BenchDaemon, BenchDaemon]:
    """Daemons A and B on loopback, B bootstrapped to A, both in channel "bench" and connected."""
    a = start_daemon(f"{label}-a")
    try:
        b = start_daemon(f"{label}-b", ["--bootstrap", f"127.0.0.1:{a.udp_port}"])
    except BaseException:
        cleanup(a)
        raise
    try:
        for daemon in (a, b):
            daemon.cli("kachery-p2p-join-channel", "bench")
        wait_for_peer(b, a.info["nodeId"])
    except BaseException:
        cleanup(a, b)
        raise
    return a, b


def store_payload(a: BenchDaemon, mib: int) -> tuple[str, str]:
    """Write ``mib`` MiB of fresh payload, store it on A, delete the source; (uri, sha1)."""
    source = str(a.root / f"payload-{os.urandom(4).hex()}.bin")
    sha1 = write_payload(source, mib)
    try:
        uri = a.cli("kachery-p2p-store", source).stdout.decode().strip()
    finally:
        os.unlink(source)
    return uri, sha1


def load_on(daemon: BenchDaemon, uri: str, timeout: float) -> Any:
    """Time ``kachery-p2p-load --json URI`` with the daemon's environment (a LoadRun)."""
    return timed_load([str(BIN_DIR / "kachery-p2p-load"), "--json", uri], daemon.env, timeout)


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(256, 32))
    parser.add_argument("--no-baseline", action="store_true", help="do not measure raw aioquic")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the load")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 256, 32)
    results: list[dict[str, Any]] = []
    baseline = None
    if not args.no_baseline:
        base, fresh = raw_aioquic.baseline(mib)
        if fresh:
            results.append(base)
        baseline = base["value"]
    a, b = connected_pair()
    try:
        uri, sha1 = store_payload(a, mib)
        load = load_on(b, uri, args.timeout)
        if not load.ok:
            raise RuntimeError(
                f"load failed (rc={load.rc}, timed_out={load.timed_out}, {load.bytes_loaded} bytes): {load.stderr}"
            )
        if sha1_file(load.path or "") != sha1:
            raise RuntimeError("downloaded file has the wrong sha1")
        rss = measure_rss(b.proc.pid)
        transfer = load.transfer_seconds()
        results.append(
            report(
                NAME,
                mib * MIB / 1e6 / load.elapsed,
                "MB/s",
                baseline,
                target="ratio>=2.5",
                baseline_is=f"raw-aioquic {mib} MiB loopback",
                config=f"{mib} MiB, loopback, 2 daemons, CLI load (includes provider search)",
                seconds=round(load.elapsed, 3),
                ttfb_ms=round((load.first_byte or 0) * 1000, 1),
                transfer_mb_s=round(mib * MIB / 1e6 / transfer, 2) if transfer else None,
                receiver_hwm_mb=round(rss.get("VmHWM", 0) / 1e6, 1),
            )
        )
    finally:
        cleanup(a, b)
    return results
