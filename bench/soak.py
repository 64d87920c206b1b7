"""Soak: a relay and 4 nodes in the NAT lab, loads in a loop for a bounded time; errors, RSS over time, fds.

As root with network namespaces (tests/netns/lab.py) the relay sits on the lab's public segment and the
nodes behind real NATs, port-restricted and symmetric in turn (bench/soak_lab.py): the two port-restricted
nodes load from each other directly (hole punched), every pair with a symmetric node through the relay.
Without root it falls back to a relay and nodes on loopback, and says so. Every node stores a few files
(1 KiB to 8 MiB); then, until ``--seconds`` have passed, a random node loads a random file of another node
with ``kachery-p2p load --json`` (the receiver's copy is deleted after each verified load, so the next load
of it crosses the network again); the link kinds its progress lines name (``paths``) count the load as
direct, relayed or both. Every ``--sample`` seconds the RSS and open file descriptors of each daemon are
recorded. Figures: loads done and failed, direct/relayed, RSS of each node and of the relay at the start,
at the end and at its peak (flat: end/start near 1; ``warm_mb``: the nodes' mean after the warm-up, at 60 s
or a quarter of the run, to tell growth from warm-up), open fds at the start and at the end.

    python -m bench soak                  # 600 s: the issue's 10 minutes (the make bench default)
    python -m bench soak --quick          # 25 s
    python -m bench soak --seconds 3600   # longer by option; --loopback to skip the lab
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import LoadRun, bench_parser, measure_rss, report, sha1_file, timed_load
from bench.daemons import BenchDaemon, cleanup
from bench.netlab import lab_modules, netns_skip_reason
from bench.soak_lab import SoakDaemon, print_paths, start_lab, start_loopback

NAME = "soak"
SIZES = (1024, 200_000, 1 << 20, 8 << 20)
FULL_SECONDS, QUICK_SECONDS = 600.0, 25.0
LOAD_TIMEOUT = 120.0


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _rss_mb(pid: int) -> float:
    try:
        return round(measure_rss(pid)["VmRSS"] / 1e6, 1)
    except (OSError, KeyError):
        return -1.0  # the daemon is gone


def _path_kind(load: LoadRun) -> str:
    kinds = set(load.paths)
    if not kinds:
        return "unknown"
    if kinds == {"direct"}:
        return "direct"
    if kinds == {"relayed"}:
        return "relayed"
    return "both" if kinds == {"direct", "relayed"} else "+".join(sorted(kinds))


def _store_files(nodes: list[SoakDaemon], work: Path) -> list[tuple[SoakDaemon, str, str]]:
    files = []
    for node in nodes:
        for size in SIZES:
            source = work / f"soak-{node.name}-{size}.bin"
            source.write_bytes(os.urandom(size))
            sha1 = sha1_file(str(source))
            files.append((node, node.store(source), sha1))
            source.unlink()
    return files


def _soak(daemons: list[SoakDaemon], work: Path, seconds: float, every: float, seed: int) -> dict[str, Any]:
    """Loads in a loop for ``seconds``; RSS and fds of every daemon every ``every`` seconds."""
    rng = random.Random(seed)
    nodes = daemons[1:]
    files = _store_files(nodes, work)
    samples: list[dict[str, Any]] = []

    def sample(at: float) -> None:
        samples.append(
            {"t": round(at, 1), "rss_mb": [_rss_mb(d.pid) for d in daemons], "fds": [_open_fds(d.pid) for d in daemons]}
        )

    started = time.monotonic()
    sample(0.0)
    next_sample = started + every
    latencies: list[float] = []
    errors: list[str] = []
    kinds: dict[str, int] = {}
    pair_kinds: dict[str, dict[str, int]] = {}
    load_bytes = 0
    while time.monotonic() - started < seconds:
        owner, uri, sha1 = rng.choice(files)
        receiver = rng.choice([n for n in nodes if n is not owner])
        load = timed_load(receiver.load_argv(uri), receiver.env, LOAD_TIMEOUT, popen=receiver.popen)
        latencies.append(load.elapsed)
        if load.ok and load.path and os.path.isfile(load.path) and sha1_file(load.path) == sha1:
            kind = _path_kind(load)
            kinds[kind] = kinds.get(kind, 0) + 1
            pair = "-".join(sorted((owner.name, receiver.name)))
            pair_kinds.setdefault(pair, {})[kind] = pair_kinds.setdefault(pair, {}).get(kind, 0) + 1
            load_bytes += os.path.getsize(load.path)
        else:
            why = load.error or (load.stderr.strip().splitlines() or [f"rc={load.rc}"])[-1]
            errors.append(f"{owner.name}->{receiver.name}: {'timed out; ' if load.timed_out else ''}{why[-200:]}")
        receiver.content_path(sha1).unlink(missing_ok=True)
        if time.monotonic() >= next_sample:
            sample(time.monotonic() - started)
            next_sample += every
    if time.monotonic() - started - samples[-1]["t"] > 0.5:  # (the loop may have just taken one)
        sample(time.monotonic() - started)
    latencies.sort()
    return {
        "samples": samples,
        "latencies": latencies,
        "errors": errors,
        "kinds": kinds,
        "pair_kinds": pair_kinds,
        "load_bytes": load_bytes,
        "seconds": time.monotonic() - started,
    }


def _reports(out: dict[str, Any], daemons: list[SoakDaemon], setting: str) -> list[dict[str, Any]]:
    samples, latencies, errors = out["samples"], out["latencies"], out["errors"]
    first, last = samples[0], samples[-1]
    # after the warm-up (caches, first connections): the first sample at 60 s or a quarter of the run
    warm = next(s for s in samples if s["t"] >= min(60.0, last["t"] / 4))
    names = [f"{d.name}({d.nat})" for d in daemons]
    peaks = [max(s["rss_mb"][i] for s in samples) for i in range(len(daemons))]
    print(f"[soak] daemons: {', '.join(names)}")
    print(f"[soak] samples (t s, RSS MB and open fds per daemon, relay first): {json.dumps(samples)}")
    for i, name in enumerate(names):
        print(
            f"[soak] {name}: RSS {first['rss_mb'][i]} -> {last['rss_mb'][i]} MB (peak {peaks[i]}), "
            f"fds {first['fds'][i]} -> {last['fds'][i]}"
        )
    print(f"[soak] paths per pair (ok loads): {json.dumps(out['pair_kinds'], sort_keys=True)}")
    if errors:
        print(f"[soak] first errors: {errors[:5]}")
    n = len(daemons) - 1
    node_start = sum(first["rss_mb"][1:]) / max(1, n)
    node_end = sum(last["rss_mb"][1:]) / max(1, n)
    config = f"relay + {n} nodes {setting}, {out['seconds']:.0f} s, files of {'/'.join(map(str, SIZES))} B"
    kinds = out["kinds"]
    return [
        report(
            f"{NAME} loads",
            len(latencies),
            "loads",
            None,
            config=config,
            mb_loaded=round(out["load_bytes"] / 1e6, 1),
            direct=kinds.get("direct", 0),
            relayed=kinds.get("relayed", 0),
            other_paths=sum(v for k, v in kinds.items() if k not in ("direct", "relayed")),
            p50_s=round(latencies[len(latencies) // 2], 3) if latencies else None,
            p99_s=round(latencies[int(len(latencies) * 0.99)], 3) if latencies else None,
        ),
        report(f"{NAME} errors", len(errors), "loads", None, target="value<=0", config=config),
        report(
            f"{NAME} node RSS at the end",
            node_end,
            "MB",
            node_start,
            target="ratio<=1.25",
            baseline_is="the same nodes at the start",
            config=config,
            start_mb=first["rss_mb"][1:],
            end_mb=last["rss_mb"][1:],
            peak_mb=peaks[1:],
            relay_mb=[first["rss_mb"][0], last["rss_mb"][0], peaks[0]],
            warm_t=warm["t"],
            warm_mb=round(sum(warm["rss_mb"][1:]) / max(1, n), 1),
            relay_warm_mb=warm["rss_mb"][0],
        ),
        report(
            f"{NAME} open fds at the end",
            sum(last["fds"]),
            "fds",
            sum(first["fds"]),
            target="ratio<=1.2",
            baseline_is="the same daemons at the start",
            config=config,
            start=first["fds"],
            end=last["fds"],
        ),
    ]


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"how long to load in a loop (default {FULL_SECONDS:g}, --quick {QUICK_SECONDS:g})",
    )
    parser.add_argument("--nodes", type=int, default=4, help="nodes besides the relay (default 4)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loopback", action="store_true", help="loopback even when the NAT lab is available")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else FULL_SECONDS)
    reason = "--loopback" if args.loopback else netns_skip_reason()
    if reason:
        print(f"[soak] NAT lab not used ({reason}): relay and nodes on loopback", flush=True)
    started: list[BenchDaemon] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kp2p-bench-soak-")))
        try:
            if reason:
                daemons = start_loopback(args.nodes, started)
                setting = "on loopback"
            else:
                lab = stack.enter_context(lab_modules()[0].Lab())
                daemons = start_lab(lab, work, args.nodes)
                setting = "in the NAT lab (relay public; nodes behind port-restricted/symmetric NATs in turn)"
            print_paths(daemons, "before")
            out = _soak(daemons, work, seconds, args.sample, args.seed)
            print_paths(daemons, "after")
        finally:
            cleanup(*started)
    return _reports(out, daemons, setting)
