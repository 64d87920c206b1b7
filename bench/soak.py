"""Soak: a relay and 4 nodes on loopback, loads in a loop for a bounded time; errors, RSS over time, open fds.

Every node stores a few files (1 KiB to 8 MiB); then, until ``--seconds`` have passed, a random node
loads a random file of another node with ``kachery-p2p-load`` (the receiver's copy is deleted after
each verified load, so the next load of it crosses the network again). Every ``--sample`` seconds the
RSS and open file descriptors of each daemon are recorded. Figures: loads done and failed, RSS of the
nodes at the start and at the end (flat: ratio near 1), their open fds at the start and at the end.

    python -m bench soak                  # 60 s (the make bench default)
    python -m bench soak --seconds 600    # the issue's 10 minutes; longer by option
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import bench_parser, measure_rss, report
from bench.daemons import BenchDaemon, cleanup, start_daemon

NAME = "soak"
BIN = Path(sys.executable).parent
SIZES = (1024, 200_000, 1 << 20, 8 << 20)


def _cli(daemon: BenchDaemon, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
    return daemon.cli(*args, timeout=timeout)


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _content_path(daemon: BenchDaemon, sha1: str) -> Path:
    return daemon.root / "store" / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def _wait_peers(daemon: BenchDaemon, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([str(BIN / "kachery-p2p-peers"), "--json"],
                             env=daemon.env, capture_output=True, timeout=30).stdout.decode()
        peers = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len([p for p in peers if "soak" in p.get("channels", [])]) >= count:
            return True
        time.sleep(0.2)
    return False


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to load in a loop (default 60)")
    parser.add_argument("--nodes", type=int, default=4, help="nodes besides the relay (default 4)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS/fd samples")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 20.0) if args.quick else args.seconds
    rng = random.Random(args.seed)
    daemons: list[BenchDaemon] = []
    try:
        relay = start_daemon("soak-relay", ["--relay"])
        daemons.append(relay)
        for i in range(args.nodes):
            node = start_daemon(f"soak-{i}", ["--bootstrap", f"127.0.0.1:{relay.udp_port}"])
            daemons.append(node)
            _cli(node, "kachery-p2p-join-channel", "soak")
        nodes = daemons[1:]
        for node in nodes:
            if not _wait_peers(node, len(nodes) - 1, 60):
                raise RuntimeError(f"{node.root.name}: channel peers did not all connect")
        files: list[tuple[BenchDaemon, str, str]] = []  # (owner, uri, sha1)
        for node in nodes:
            for size in SIZES:
                source = node.root / f"soak-{size}.bin"
                data = os.urandom(size)
                source.write_bytes(data)
                uri = _cli(node, "kachery-p2p-store", str(source)).stdout.decode().strip()
                source.unlink()
                files.append((node, uri, hashlib.sha1(data).hexdigest()))
        samples: list[dict[str, Any]] = []

        def sample(at: float) -> None:
            samples.append({
                "t": round(at, 1),
                "rss_mb": [round(measure_rss(d.proc.pid)["VmRSS"] / 1e6, 1) for d in daemons],
                "fds": [_open_fds(d.proc.pid) for d in daemons],
            })

        started = time.monotonic()
        sample(0.0)
        next_sample = started + args.sample
        loads = errors = 0
        load_bytes = 0
        latencies: list[float] = []
        error_lines: list[str] = []
        while time.monotonic() - started < seconds:
            owner, uri, sha1 = rng.choice(files)
            receiver = rng.choice([n for n in nodes if n is not owner])
            begun = time.monotonic()
            result = subprocess.run([str(BIN / "kachery-p2p-load"), uri],
                                    env=receiver.env, capture_output=True, timeout=120)
            latencies.append(time.monotonic() - begun)
            loads += 1
            path = _content_path(receiver, sha1)
            if result.returncode != 0 or not path.is_file() or hashlib.sha1(path.read_bytes()).hexdigest() != sha1:
                errors += 1
                error_lines.append(result.stderr.decode(errors="replace").strip()[-200:])
            else:
                load_bytes += path.stat().st_size
            path.unlink(missing_ok=True)
            if time.monotonic() >= next_sample:
                sample(time.monotonic() - started)
                next_sample += args.sample
        sample(time.monotonic() - started)
    finally:
        cleanup(*daemons)
    first, last = samples[0], samples[-1]
    node_rss_start = sum(first["rss_mb"][1:]) / max(1, len(first["rss_mb"]) - 1)
    node_rss_end = sum(last["rss_mb"][1:]) / max(1, len(last["rss_mb"]) - 1)
    peak = max(max(s["rss_mb"][1:]) for s in samples)
    latencies.sort()
    config = f"relay + {args.nodes} nodes on loopback, {seconds:g} s, files of {'/'.join(map(str, SIZES))} B"
    print(f"[soak] samples (t s, RSS MB per daemon relay first, open fds): {json.dumps(samples)}")
    if error_lines:
        print(f"[soak] first errors: {error_lines[:3]}")
    return [
        report(f"{NAME} loads", loads, "loads", None, config=config, mb_loaded=round(load_bytes / 1e6, 1),
               p50_s=round(latencies[len(latencies) // 2], 3) if latencies else None,
               p99_s=round(latencies[int(len(latencies) * 0.99)], 3) if latencies else None),
        report(f"{NAME} errors", errors, "loads", None, target="value<=0", config=config),
        report(f"{NAME} node RSS at the end", node_rss_end, "MB", node_rss_start, target="ratio<=1.25",
               baseline_is="the same nodes at the start", config=config, peak_mb=peak,
               relay_mb=[first["rss_mb"][0], last["rss_mb"][0]]),
        report(f"{NAME} open fds at the end", sum(last["fds"]), "fds", sum(first["fds"]), target="ratio<=1.2",
               baseline_is="the same daemons at the start", config=config),
    ]
