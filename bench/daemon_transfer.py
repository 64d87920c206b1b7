"""Daemon-to-daemon `kachery-p2p-load` of N MiB on loopback, next to raw aioquic in the same run."""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from typing import Any

from bench import raw_aioquic
from bench.common import measure_rss, report
from bench.daemons import cleanup, start_daemon, wait_for_peer

NAME = "daemon-load"


def _make_file(path: str, mib: int) -> str:
    digest = hashlib.sha1()
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for index in range(mib):
            piece = index.to_bytes(8, "big") + block[8:]
            handle.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench daemon-load")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    baseline = None
    results = []
    if not args.no_baseline:
        base = raw_aioquic.run(["--mib", str(args.mib)])[0]
        results.append(base)
        baseline = base["value"]
    a = start_daemon("bench-a")
    b = start_daemon("bench-b", ["--bootstrap", f"127.0.0.1:{a.udp_port}"])
    try:
        for daemon in (a, b):
            daemon.cli("kachery-p2p-join-channel", "bench")
        wait_for_peer(b, a.info["nodeId"])
        source = str(a.root / "payload.bin")
        sha1 = _make_file(source, args.mib)
        uri = a.cli("kachery-p2p-store", source).stdout.decode().strip()
        os.unlink(source)
        started = time.monotonic()
        path = b.cli("kachery-p2p-load", uri).stdout.decode().strip()
        seconds = time.monotonic() - started
        with open(path, "rb") as handle:
            got = hashlib.file_digest(handle, "sha1").hexdigest()
        if got != sha1:
            raise RuntimeError("downloaded file has the wrong sha1")
        rss = measure_rss(b.proc.pid)
        results.append(
            report(
                NAME,
                args.mib * 1048576 / 1e6 / seconds,
                "MB/s",
                baseline,
                config=f"{args.mib} MiB, loopback, 2 daemons, CLI load (includes provider search)",
                seconds=round(seconds, 3),
                receiver_hwm_mb=round(rss.get("VmHWM", 0) / 1e6, 1),
            )
        )
    finally:
        cleanup(a, b)
    return results
