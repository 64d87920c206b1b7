"""Run benchmarks: ``python -m bench`` runs the whole suite and prints a table where each figure sits next
to its baseline measured in the same run, with the target of the performance issue and whether it is met
(information only: nothing here asserts timing).

    python -m bench                      # the whole suite (well under 30 min on 2 cores)
    python -m bench --quick              # smaller sizes (32 MiB instead of 256, 128 MiB instead of 1 GiB)
    python -m bench NAME [options...]    # one benchmark, e.g. python -m bench raw-aioquic --mib 64
    python -m bench NAME --help          # its options
    python -m bench --list               # the names
    python -m bench --skip A,B [...]     # the suite without A and B

Leading options (``--quick``, ``--mib N``) go to every benchmark of the suite. Benchmarks that need network
namespaces (lan-load, nat-cold, shaped-load, wan, nat-load) print why they are skipped when not run as root.

The suite, in order (letters as in the performance issue):
  (a) raw-aioquic    raw aioquic, one stream, default settings, two processes, loopback: the baseline
  (b) daemon-load    daemon-to-daemon kachery-p2p-load on loopback, ratio to (a) of the same run
  (c) lan-load       the same between two namespaces on a MTU-1500 LAN, ratio to raw aioquic over that pair
      lan-gbit       the same over a 1 Gbit/s (tbf) MTU-1500 pair vs kernel TCP (http.server + curl); CPU-s/GB
      quic-cpu       aioquic's CPU-s/GB in memory, sender and receiver, fast path on vs off (baseline), reno and bbr
  (d) small-load     1 KiB load from a connected peer: Python API and CLI, median and p90
  (e) daemon-memory  idle RSS and CPU; peak RSS during a 1 GiB load; RSS after it
  (f) nat-cold       time to first byte from a peer not yet connected, across two NATs with a relay
  (g) shaped-load    goodput over a 100 Mbit/s link, without loss and with 1% loss, as a fraction of it
  (h) wan            100 Mbit/s, RTT 20/80 ms x loss 0/0.5/2%: ours vs kernel TCP (curl); sharing the link with curl
      local-store    store / load / cat of a large file in one daemon, vs a plain copy
      nat-load       time to first byte and completion across two NATs, direct and relayed (connected)
      feeds          append-on-A to visible-on-B latency (p50, p90) and sustained messages/s (bench/feeds.py)
      soak           relay + 4 nodes behind NATs in the lab (loopback without root), loads in a loop for 10 min
                     (--quick 25 s, --seconds N): errors, direct/relayed, RSS over time, fds
  Not in the suite: relay-load (N simulated nodes register, publish, look up: RSS per node, lookup p50/p99;
      two real nodes load through that relay meanwhile), stalled-readers (RSS of a daemon whose peers stop reading, #4),
      cc-sim (congestion controllers on a simulated 100 Mbit/s WAN path, in memory: bench/cc_sim.py)

To add a benchmark: write ``run(argv: list[str]) -> list[dict]`` that calls ``bench.common.report(...)``
per result and returns the dicts (accept ``--quick``: ``bench.common.bench_parser``), and register it below.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Benchmark daemons talk only to loopback and to the lab's namespaces: never to this machine's router.
os.environ.setdefault("KACHERY_P2P_PORT_MAPPING", "0")

from bench import (
    cc_sim,
    daemon_memory,
    daemon_transfer,
    feeds,
    lan_gbit,
    lan_transfer,
    local_store,
    multi_provider,
    nat_cold,
    nat_transfer,
    quic_cpu,
    raw_aioquic,
    reach_matrix,
    relay_load,
    shaped_load,
    small_load,
    soak,
    stalled_readers,
    wan,
)
from bench.common import print_table

BenchFn = Callable[[list[str]], list[dict[str, Any]]]

# name -> callable(argv) returning a list of result dicts (see bench.common.make_result); the suite's order
REGISTRY: dict[str, BenchFn] = {
    raw_aioquic.NAME: raw_aioquic.run,
    quic_cpu.NAME: quic_cpu.run,
    daemon_transfer.NAME: daemon_transfer.run,
    lan_transfer.NAME: lan_transfer.run,
    lan_gbit.NAME: lan_gbit.run,
    small_load.NAME: small_load.run,
    daemon_memory.NAME: daemon_memory.run,
    nat_cold.NAME: nat_cold.run,
    shaped_load.NAME: shaped_load.run,
    wan.NAME: wan.run,
    local_store.NAME: local_store.run,
    nat_transfer.NAME: nat_transfer.run,
    reach_matrix.NAME: reach_matrix.run,
    multi_provider.NAME: multi_provider.run,
    feeds.NAME: feeds.run,
    soak.NAME: soak.run,
}
# Not in the default suite (long at 1,000+ nodes): python -m bench relay-load --nodes N
EXTRA: dict[str, BenchFn] = {
    relay_load.NAME: relay_load.run,
    stalled_readers.NAME: stalled_readers.run,
    cc_sim.NAME: cc_sim.run,
}


def _machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{os.cpu_count()} cores, load average {load}"


def _compile_package() -> None:
    """Write kachery_p2p's bytecode, as an install does: with PYTHONDONTWRITEBYTECODE set (as on this
    machine), a checkout whose sources changed since its .pyc files were written recompiles every module at
    each daemon and command start (~60 ms per command, ~0.4 s per daemon), which no installed user pays."""
    import compileall

    import kachery_p2p

    compileall.compile_dir(str(Path(kachery_p2p.__file__).parent), quiet=1)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    _compile_package()
    if argv and argv[0] == "--list":
        print("\n".join(REGISTRY))
        return 0
    skipped: set[str] = set()
    if "--skip" in argv:
        i = argv.index("--skip")
        skipped = {name.strip() for name in argv[i + 1].split(",")} if i + 1 < len(argv) else set()
        argv = argv[:i] + argv[i + 2 :]
        unknown = skipped - set(REGISTRY)
        if unknown:
            print(f"unknown benchmark(s) {sorted(unknown)}; available: {', '.join(REGISTRY)}", file=sys.stderr)
            return 2
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name in EXTRA:
            REGISTRY[name] = EXTRA[name]
        if name not in REGISTRY:
            print(f"unknown benchmark {name!r}; available: {', '.join(REGISTRY)}", file=sys.stderr)
            return 2
        plan = [(name, rest)]
    else:
        # leading options go to every benchmark
        plan = [(name, list(argv)) for name in REGISTRY if name not in skipped]
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    durations: list[str] = []
    suite_start = time.monotonic()
    print(f"machine: {_machine()}", flush=True)
    for name, bench_argv in plan:
        print(f"== {name} {' '.join(bench_argv)}".rstrip(), flush=True)
        start = time.monotonic()
        try:
            results.extend(REGISTRY[name](bench_argv))
        except SystemExit as exc:  # argparse: --help or a bad option
            if exc.code not in (0, None):
                failed.append(name)
            if len(plan) == 1:
                return int(exc.code or 0)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        durations.append(f"{name} {time.monotonic() - start:.0f} s")
        sys.stdout.flush()
    print()
    print_table(results)
    print(f"\ntime: {time.monotonic() - suite_start:.0f} s ({', '.join(durations)})")
    print(f"machine: {_machine()} (other processes' CPU use skews the figures: compare within a run)")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
