"""(d) Latency of a 1 KiB load from a connected peer: median and p90 over N loads, through the Python API
(``kachery_p2p.load_bytes`` and ``kachery_p2p.load_file``, in this process) and through the CLI
(``kachery-p2p-load``, one process per load, as a user types it).

Two daemons on loopback, connected, in one channel. Every timed load is of a NEW 1 KiB file of random bytes
stored on A just before (through A's control endpoint), so each one asks the peer and crosses the network;
the API calls run with B's environment (KACHERY_P2P_CONFIG_DIR / _API_PORT / KACHERY_STORAGE_DIR). The
baseline of each figure is the same call for a 1 KiB file already in B's own store (no network): what the
control endpoint (and, for the CLI, Python start-up) costs by itself.

    .venv/bin/python -m bench small-load [--count 30] [--kib 1]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import bench_parser, median, patched_environ, percentile, report
from bench.daemon_transfer import connected_pair
from bench.daemons import BenchDaemon, cleanup

NAME = "small-load"
ENV_KEYS = ("KACHERY_P2P_CONFIG_DIR", "KACHERY_P2P_API_PORT", "KACHERY_STORAGE_DIR")


def _store(daemon: BenchDaemon, data: bytes) -> str:
    import kachery_p2p

    with patched_environ(daemon.env, ENV_KEYS):
        return kachery_p2p.store_bytes(data, "small.bin")


def _api_load_bytes(daemon: BenchDaemon, uri: str) -> bytes | None:
    import kachery_p2p

    with patched_environ(daemon.env, ENV_KEYS):
        return kachery_p2p.load_bytes(uri)


def _api_load_file(daemon: BenchDaemon, uri: str) -> bytes | None:
    import kachery_p2p

    with patched_environ(daemon.env, ENV_KEYS):
        path = kachery_p2p.load_file(uri)
    return None if path is None else Path(path).read_bytes()


def _cli_load(daemon: BenchDaemon, uri: str) -> bytes | None:
    path = daemon.cli("kachery-p2p-load", uri, timeout=60).stdout.decode().strip()
    return Path(path).read_bytes() if path else None


def _time_loads(
    load: Callable[[BenchDaemon, str], bytes | None],
    receiver: BenchDaemon,
    provider: BenchDaemon,
    count: int,
    size: int,
) -> list[float]:
    """Seconds of ``count`` loads on ``receiver``, each of a new file stored on ``provider`` just before."""
    times = []
    for _ in range(count):
        data = os.urandom(size)
        uri = _store(provider, data)
        start = time.perf_counter()
        got = load(receiver, uri)
        times.append(time.perf_counter() - start)
        if got != data:
            raise RuntimeError(f"{load.__name__}: wrong bytes for {uri} ({None if got is None else len(got)} bytes)")
    return times


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="loads per method (default 30, --quick 15)")
    parser.add_argument("--kib", type=int, default=1, help="file size in KiB (default 1)")
    args = parser.parse_args(argv)
    count = args.count or (15 if args.quick else 30)
    size = args.kib * 1024
    results: list[dict[str, Any]] = []
    methods: list[tuple[str, Callable[[BenchDaemon, str], bytes | None], float]] = [
        ("api load_bytes", _api_load_bytes, 20.0),
        ("api load_file", _api_load_file, 20.0),
        ("cli", _cli_load, 250.0),
    ]
    a, b = connected_pair("small")
    try:
        for label, load, target in methods:
            local = _time_loads(load, b, b, max(5, count // 3), size)  # baseline: B has the file itself
            remote = _time_loads(load, b, a, count, size)
            config = f"{args.kib} KiB, loopback, connected peer, n={count}"
            for stat, pick in (("p50", median), ("p90", lambda v: percentile(v, 90))):
                results.append(
                    report(
                        f"{NAME} {label} {stat}",
                        pick(remote) * 1000,
                        "ms",
                        pick(local) * 1000,
                        target=f"value<={target:g}",
                        baseline_is=f"{stat} of the same call, file already local (n={len(local)})",
                        config=config,
                        min_ms=round(min(remote) * 1000, 2),
                        max_ms=round(max(remote) * 1000, 2),
                    )
                )
    finally:
        cleanup(a, b)
    return results
