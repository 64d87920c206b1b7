"""(f) Time to first byte from a peer that is NOT yet connected, across two port-restricted NATs with a relay
(network namespaces, needs root): the connection comes up through the relay and hole punching while the
user is already asking for the file.

A relay on the public segment; A and B each behind its own port-restricted NAT. Both daemons are started
(bootstrapping to the relay, hole punching on); A stores N MiB (default 10, --quick 4); then B at once runs
``kachery-p2p load --json URI`` again and again until one succeeds. The clock starts with the first attempt:
connect+TTFB is the time to the first byte of the load that succeeded (its first JSON line + its
``firstByteSec``), completion the time to its "done" line. The baselines are the same figures for a second,
new file loaded right after from the now connected peer (warm), in the same lab.
To keep B from knowing A before it asks, A joins the channel and stores first, then B joins and at once
starts loading. Each run is a fresh lab; the figures are the median and the worst of --repeat runs
(5, --quick 2), each run printed.

    .venv/bin/python -m bench nat-cold [--mib 10] [--quick] [--repeat 5] [--show-logs]
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import LoadRun, bench_parser, median, pick_mib, report, sha1_file, skip, write_payload
from bench.netlab import lab_load, lab_modules, log_tail, netns_skip_reason

NAME = "nat-cold"
MIB = 1 << 20


def _store(node: Any, work: Path, mib: int) -> tuple[str, str]:
    source = work / f"payload-{os.urandom(4).hex()}.bin"
    sha1 = write_payload(source, mib)
    uri = node.cli("store", str(source)).stdout.strip()
    os.unlink(source)
    return uri, sha1


def _print_failures(attempts: list[LoadRun], first_attempt: float) -> None:
    """One line per distinct failure message of the attempts (hashes masked): count, first and last time."""
    seen: dict[str, list[float]] = {}
    for load in attempts:
        if load.ok:
            continue
        text = (load.stderr.strip().splitlines() or [f"rc={load.rc}, no message"])[-1]
        text = re.sub(r"[0-9a-f]{16,}", "<hash>", text)[:200]
        seen.setdefault(text, []).append(load.started - first_attempt)
    for text, times in seen.items():
        print(f"[bench] {NAME}: {len(times)} failed attempt(s) at {times[0]:.2f}-{times[-1]:.2f} s: {text}", flush=True)


def _one(args: Any, mib: int) -> dict[str, Any]:
    """One cold load (and one warm load after it) in a fresh lab; the figures in seconds and what was seen."""
    lab_mod, nodes = lab_modules()
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-natcold-") as tmp, lab_mod.Lab() as lab:
        work = Path(tmp)
        relay_host = lab.add_public_host("relay")
        host_a = lab.add_natted_host("a", "port-restricted")
        host_b = lab.add_natted_host("b", "port-restricted")
        nodes.start_relay(lab, relay_host, work / "relay")
        t_start = time.monotonic()
        a = nodes.start_peer(lab, host_a, work / "a", "a", relay_host)
        b = nodes.start_peer(lab, host_b, work / "b", "b", relay_host)
        t_ready = time.monotonic()
        a.cli("join-channel", "bench")
        uri, sha1 = _store(a, work, mib)
        b.cli("join-channel", "bench")  # B learns of A only now: the first attempt follows at once

        attempts: list[LoadRun] = []
        first_attempt = time.monotonic()
        deadline = first_attempt + args.deadline
        while time.monotonic() < deadline:
            load = lab_load(b, uri, max(1.0, deadline - time.monotonic()))
            attempts.append(load)
            if load.ok or load.timed_out:
                break
        cold = attempts[-1] if attempts else None
        _print_failures(attempts, first_attempt)
        if cold is None or not cold.ok or sha1_file(cold.path or "") != sha1:
            last = cold.stderr.strip()[-500:] if cold else ""
            raise RuntimeError(
                f"no load succeeded within {args.deadline:g} s ({len(attempts)} attempts); last: {last}\n"
                f"--- B log\n{log_tail(b)}\n--- A log\n{log_tail(a)}"
            )
        if args.show_logs:
            ago = time.monotonic() - first_attempt
            print(
                f"[bench] {NAME}: the first attempt was {ago:.2f} s ago, "
                f"at {time.strftime('%H:%M:%S', time.localtime(time.time() - ago))}"
            )
            for label, node in (("B (loads)", b), ("A (stores)", a)):
                lines = [line for line in node.log().splitlines() if " quic: " not in line]
                print(f"--- {label} log\n" + "\n".join(lines[-40:]), flush=True)
        offset = cold.started - first_attempt
        cold_ttfb = offset + (cold.first_byte if cold.first_byte is not None else cold.done or cold.elapsed)
        cold_done = offset + (cold.done or cold.elapsed)
        path_now = (b.peer(a.info()["nodeId"]) or {}).get("path")

        warm_uri, warm_sha1 = _store(a, work, mib)
        warm = lab_load(b, warm_uri, 120.0)
        if not warm.ok or sha1_file(warm.path or "") != warm_sha1:
            raise RuntimeError(f"warm load failed: rc={warm.rc} {warm.stderr.strip()[-500:]}\n{log_tail(b)}")
        one = {
            "cold_ttfb": cold_ttfb,
            "cold_done": cold_done,
            "warm_ttfb": warm.first_byte if warm.first_byte is not None else warm.done or warm.elapsed,
            "warm_done": warm.done or warm.elapsed,
            "attempts": len(attempts),
            "paths_seen": ",".join(cold.paths) or "-",
            "path_after": path_now,
            "daemons_start_s": t_ready - t_start,
        }
        print(
            f"[bench] {NAME}: run: connect+TTFB {cold_ttfb * 1000:.0f} ms, completion {cold_done:.2f} s, "
            f"{len(attempts)} attempt(s), path {one['paths_seen']}; warm TTFB {one['warm_ttfb'] * 1000:.0f} ms",
            flush=True,
        )
        return one


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(10, 4))
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds to keep trying (default 120)")
    parser.add_argument("--repeat", type=int, default=None, help="fresh labs to measure (default 5, --quick 2)")
    parser.add_argument("--show-logs", action="store_true", help="print both daemons' logs after the cold load")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 10, 4)
    repeat = args.repeat or (2 if args.quick else 5)
    reason = netns_skip_reason()
    if reason:
        return [skip(NAME, reason)]
    runs = [_one(args, mib) for _ in range(repeat)]
    config = f"{mib} MiB, 2 port-restricted NATs + relay, B joins then loads at once; median of {repeat}"
    extra = {
        "attempts": ",".join(str(r["attempts"]) for r in runs),
        "paths_seen": ",".join(str(r["paths_seen"]) for r in runs),
        "path_after": ",".join(str(r["path_after"]) for r in runs),
    }
    return [
        report(
            f"{NAME} connect+TTFB",
            median([r["cold_ttfb"] for r in runs]) * 1000,
            "ms",
            median([r["warm_ttfb"] for r in runs]) * 1000,
            baseline_is="TTFB of a new file from the then connected peer (warm)",
            config=config,
            all_ms=",".join(f"{r['cold_ttfb'] * 1000:.0f}" for r in runs),
            **extra,
        ),
        report(
            f"{NAME} connect+TTFB worst",
            max(r["cold_ttfb"] for r in runs) * 1000,
            "ms",
            max(r["warm_ttfb"] for r in runs) * 1000,
            baseline_is="worst warm TTFB",
            config=config.replace("median", "worst"),
        ),
        report(
            f"{NAME} completion",
            median([r["cold_done"] for r in runs]),
            "s",
            median([r["warm_done"] for r in runs]),
            baseline_is="completion from the then connected peer (warm)",
            config=config,
            all_s=",".join(f"{r['cold_done']:.2f}" for r in runs),
        ),
    ]
