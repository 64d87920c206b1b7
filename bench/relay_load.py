"""Relay load: N simulated nodes register with a relay daemon on loopback, publish a rendezvous record
and look their channel peers up, while two real daemons that reach each other only through that relay
load a file; the same load with the relay idle, earlier in the same run, is the baseline.

The simulated nodes live in ``--workers`` load-generator processes (bench/relay_load_worker.py), each
node with its own identity, its own loopback address (127.x.y.z) and UDP socket, and a real QUIC session
with the relay. Nodes share channels in groups of 10 (a lookup returns 9 records besides the node's own).
Figures: registered nodes and the time it took, relay RSS per registered node, lookup latency p50/p99
with every node registered, and the CPU (% of one core) of the relay and, separately, of all generator
processes together, during registration and during the lookups: whichever is near 100 % per core was
the bottleneck. Bounded: ``--timeout`` for registering, ``--lookup-seconds`` for the lookups; every
process started here is ended (by PID) however the run ends. Run it under ``nice -n 10``.

    python -m bench relay-load --nodes 1000
    python -m bench relay-load --nodes 10000 --workers 4
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import resource
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bench.common import bench_parser, cpu_seconds, measure_rss, percentile, report
from bench.daemons import BenchDaemon, cleanup, start_daemon
from bench.relay_load_worker import GROUP, worker_main
from bench.relayed_pair import RelayedPair

NAME = "relay-load"


class Generators:
    """The load-generator processes and the pipes to them."""

    def __init__(self, count: int, workers: int, relay: BenchDaemon) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        share = math.ceil(count / workers)
        for first in range(0, count, share):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, daemon=True,
                               args=(theirs, first, min(share, count - first), relay.udp_port, relay.info["nodeId"]))
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)

    def send(self, *command: Any) -> None:
        for conn in self.conns:
            conn.send(command)

    def gather(self, kind: str, timeout: float) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        replies = []
        for conn in self.conns:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a load generator did not answer {kind!r} in {timeout:.0f} s")
            reply = conn.recv()
            if reply[0] != kind:
                raise RuntimeError(f"a load generator answered {reply[0]!r}, not {kind!r}")
            replies.append(reply)
        return replies

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None and p.is_alive())

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("close",))
        deadline = time.monotonic() + 15
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()  # by its PID (multiprocessing), ours
                proc.join(5)
        for conn in self.conns:
            conn.close()


def _failures(replies: list[tuple[int, list[str]]]) -> tuple[int, list[str]]:
    return sum(count for count, _ in replies), [e for _, examples in replies for e in examples][:5]


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread has waited, runnable, for a CPU (/proc/<pid>/schedstat): on a
    shared machine this shows how much of a latency is other processes' CPU use, not the relay's work."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Meter:
    """CPU (% of one core) of the relay and of the generators over a phase, and the relay's run-queue
    wait (% of the wall clock it was runnable but another process had the CPU)."""

    def __init__(self, relay_pid: int, gens: Generators) -> None:
        self.relay_pid, self.gens = relay_pid, gens
        self.t0, self.relay0, self.gens0 = time.monotonic(), cpu_seconds(relay_pid), gens.cpu()
        self.wait0 = run_queue_wait(relay_pid)

    def done(self) -> tuple[float, float, float]:
        seconds = max(1e-6, time.monotonic() - self.t0)
        return (100 * (cpu_seconds(self.relay_pid) - self.relay0) / seconds,
                100 * (self.gens.cpu() - self.gens0) / seconds,
                100 * (run_queue_wait(self.relay_pid) - self.wait0) / seconds)


def _drive(args: argparse.Namespace, count: int, relay: BenchDaemon, pair: RelayedPair | None) -> dict[str, Any]:
    pid = relay.proc.pid
    out: dict[str, Any] = {"failures": [], "failure_count": 0}
    gens = Generators(count, args.workers, relay)
    try:
        per_worker = max(1, math.ceil(args.concurrency / len(gens.conns)))
        time.sleep(0.5)
        out["idle_rss"] = measure_rss(pid)["VmRSS"]
        meter = Meter(pid, gens)
        gens.send("register", per_worker, args.timeout)
        replies = gens.gather("registered", args.timeout + 120)
        out["register_s"] = max(r[3] for r in replies)
        out["registered"] = sum(r[1] for r in replies)
        out["register_relay_cpu"], out["register_gen_cpu"], out["register_relay_wait"] = meter.done()
        n, examples = _failures([r[2] for r in replies])
        out["failure_count"] += n
        out["failures"] += examples
        # Records live 600 s: publish again so that a long registration leaves none expired.
        gens.send("publish", per_worker)
        n, examples = _failures([r[1] for r in gens.gather("published", 600)])
        out["failure_count"] += n
        out["failures"] += examples
        time.sleep(1.0)
        out["rss"] = measure_rss(pid)["VmRSS"]
        meter = Meter(pid, gens)
        gens.send("lookup", per_worker)
        started = time.monotonic()
        if pair is not None:
            time.sleep(1.0)  # the lookups are running
            out["loaded"] = pair.load(pair.uris[1])
        time.sleep(max(0.0, started + args.lookup_seconds - time.monotonic()))
        gens.send("stop")
        replies = gens.gather("looked-up", 120)
        out["lookup_relay_cpu"], out["lookup_gen_cpu"], out["lookup_relay_wait"] = meter.done()
        out["lookup_s"] = time.monotonic() - started
        latencies = [x for r in replies for x in r[1]]
        found = [x for r in replies for x in r[2]]
        n, examples = _failures([r[3] for r in replies])
        out["failure_count"] += n
        out["failures"] += examples
        out["lookups"] = len(latencies)
        out["p50"] = percentile(latencies, 50) if latencies else float("nan")
        out["p99"] = percentile(latencies, 99) if latencies else float("nan")
        out["peers_per_lookup"] = sum(found) / len(found) if found else 0.0
    finally:
        gens.close()
    return out



def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200, help="simulated nodes (default 200; --quick 50)")
    parser.add_argument("--workers", type=int, default=4, help="load-generator processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="registrations / lookups in flight, over all generators (default 32)")
    parser.add_argument("--timeout", type=float, default=600.0, help="time limit for registering (default 600 s)")
    parser.add_argument("--lookup-seconds", type=float, default=20.0, help="lookups for this long (default 20 s)")
    parser.add_argument("--transfer-mib", type=int, default=16,
                        help="MiB two real daemons load through the relay, idle then under load (0: none)")
    parser.add_argument("--relay-rate", type=float, default=None, help="the relay's --relay-rate (MB/s per node)")
    args = parser.parse_args(argv)
    count = min(args.nodes, 50) if args.quick else args.nodes
    if args.quick:
        args.lookup_seconds = min(args.lookup_seconds, 5.0)
        args.transfer_mib = min(args.transfer_mib, 4)
    args.workers = max(1, min(args.workers, count))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 1024  # one UDP socket per simulated node, in the generators; the relay needs few
    if need > hard:
        raise SystemExit(f"{NAME}: {count} nodes need {need} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))  # inherited by every child
    extra = ["--relay", "--relay-max-nodes", str(count + 16)]
    if args.relay_rate:
        extra += ["--relay-rate", str(args.relay_rate)]
    relay = start_daemon("relay-load", extra)
    pair: RelayedPair | None = None
    try:
        idle_transfer = None
        if args.transfer_mib:
            pair = RelayedPair(relay, args.transfer_mib)
            idle_transfer = pair.load(pair.uris[0])
        result = _drive(args, count, relay, pair)
        transfer_rows: list[dict[str, Any]] = []
        if pair is not None and idle_transfer is not None and result.get("loaded") is not None:
            transfer_rows = pair.compare(NAME, idle_transfer, result["loaded"], count)  # before the cleanup
    finally:
        if pair is not None:
            pair.close()
        cleanup(relay)
    config = f"{count} nodes in {args.workers} generator processes, channels of {GROUP}, {args.concurrency} in flight"
    if result["failure_count"]:
        print(f"[{NAME}] {result['failure_count']} failures, first: {result['failures']}")
    per_node = (result["rss"] - result["idle_rss"]) / max(1, result["registered"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    results = [
        report(f"{NAME} registered nodes", result["registered"], "nodes", count, target="ratio>=1", config=config,
               register_s=round(result["register_s"], 1), failures=result["failure_count"],
               relay_cpu_pct=round(result["register_relay_cpu"]), generators_cpu_pct=round(result["register_gen_cpu"]),
               relay_runqueue_wait_pct=round(result["register_relay_wait"])),
        report(f"{NAME} relay RSS per node", per_node / 1e3, "kB", None, config=config,
               relay_idle_mb=round(result["idle_rss"] / 1e6, 1), relay_loaded_mb=round(result["rss"] / 1e6, 1)),
        report(f"{NAME} lookup p50", result["p50"] * 1e3, "ms", None, config=config, lookups=result["lookups"],
               lookups_per_s=round(result["lookups"] / result["lookup_s"]),
               peers_per_lookup=round(result["peers_per_lookup"], 1)),
        report(f"{NAME} lookup p99", result["p99"] * 1e3, "ms", None, config=config),
        report(f"{NAME} relay CPU during lookups", result["lookup_relay_cpu"], "%", None, config=config,
               generators_cpu_pct=round(result["lookup_gen_cpu"]),
               relay_runqueue_wait_pct=round(result["lookup_relay_wait"]), load_average=load),
    ]
    return results + transfer_rows
