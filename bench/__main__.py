"""Run benchmarks: ``python -m bench`` runs all with default options and prints a table;
``python -m bench NAME [options...]`` runs one (options go to that benchmark, e.g.
``python -m bench raw-aioquic --mib 64``); ``python -m bench --list`` lists them.

To add a benchmark: write ``run(argv: list[str]) -> list[dict]`` that calls
``bench.common.report(...)`` per result and returns the dicts, and register it in REGISTRY.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from bench import daemon_transfer, local_store, nat_transfer, raw_aioquic
from bench.common import print_table

BenchFn = Callable[[list[str]], list[dict[str, Any]]]

# name -> callable(argv) returning a list of result dicts (see bench.common.make_result)
REGISTRY: dict[str, BenchFn] = {
    raw_aioquic.NAME: raw_aioquic.run,
    local_store.NAME: local_store.run,
    daemon_transfer.NAME: daemon_transfer.run,
    nat_transfer.NAME: nat_transfer.run,
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] == "--list":
        print("\n".join(REGISTRY))
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name not in REGISTRY:
            print(f"unknown benchmark {name!r}; available: {', '.join(REGISTRY)}", file=sys.stderr)
            return 2
        plan = [(name, rest)]
    else:
        plan = [(name, list(argv)) for name in REGISTRY]  # leading options go to every benchmark
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    for name, bench_argv in plan:
        print(f"== {name} {' '.join(bench_argv)}".rstrip(), flush=True)
        try:
            results.extend(REGISTRY[name](bench_argv))
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print()
    print_table(results)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
