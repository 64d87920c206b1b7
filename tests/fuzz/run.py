"""``make fuzz``: a long mutation-fuzzing run of every network decoder (targets.py), with counts.

Plain ``random`` mutations of the valid seeds (flip, insert, delete, truncate, splice, random bytes),
for throughput. Each decoder gets ``--count`` inputs or ``--seconds``, whichever ends first; a crash
(an exception the decoder must not raise) is printed with the input and counted. Exit code 1 if any.

    python tests/fuzz/run.py --count 1000000 --seconds 300 [--only stun,manifest] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from targets import TARGETS, Target, check


def mutate(rng: random.Random, seeds: tuple[bytes, ...]) -> bytes:
    if rng.random() < 0.05:
        return rng.randbytes(rng.randrange(0, 2048))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 9)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 2:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 17))
        elif op == 3:
            del data[pos : pos + rng.randrange(1, 17)]
        elif op == 4:
            del data[pos:]
        else:
            other = rng.choice(seeds)
            start = rng.randrange(len(other) + 1)
            data[pos:pos] = other[start : start + rng.randrange(0, 65)]
    return bytes(data)


def fuzz(target: Target, count: int, seconds: float, rng: random.Random) -> dict[str, object]:
    started = time.perf_counter()
    deadline = started + seconds
    done = crashes = 0
    first_crash = ""
    while done < count:
        if done % 1000 == 0 and time.perf_counter() > deadline:
            break
        data = mutate(rng, target.seeds)
        error = check(target, data)
        done += 1
        if error is not None:
            crashes += 1
            if not first_crash:
                first_crash = f"{error!r} on {data[:120]!r}"
                print(f"  CRASH {target.name}: {first_crash}", flush=True)
    elapsed = time.perf_counter() - started
    return {"decoder": target.name, "inputs": done, "crashes": crashes, "seconds": round(elapsed, 1),
            "inputsPerSec": round(done / elapsed) if elapsed else 0, "firstCrash": first_crash}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs per decoder (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=120.0, help="time limit per decoder (default 120)")
    parser.add_argument("--only", default="", help="comma-separated decoder names")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON line per decoder")
    args = parser.parse_args()
    wanted = {n for n in args.only.split(",") if n}
    rng = random.Random(args.seed)
    total_crashes = 0
    for target in TARGETS:
        if wanted and target.name not in wanted:
            continue
        result = fuzz(target, args.count, args.seconds, rng)
        total_crashes += int(result["crashes"])  # type: ignore[call-overload]
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{result['decoder']:<18} {result['inputs']:>9,} inputs  {result['crashes']} crashes  "
                  f"{result['seconds']:>6} s  {result['inputsPerSec']:>7,}/s", flush=True)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
