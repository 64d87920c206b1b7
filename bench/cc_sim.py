"""Congestion controllers on a simulated 100 Mbit/s WAN path (``kachery_p2p.quic.simlink``): no sockets,
simulated clock, seeded loss, so the figures are the same on every machine (only the run time varies).

    python -m bench cc-sim                      # reno, cubic, kachery-bbr x 20/80 ms x 0/0.5/2 % loss
    python -m bench cc-sim --quick              # 4 MB instead of 10 MB, no sharing rows
    python -m bench cc-sim --controllers reno,kachery-bbr --rtt 80 --loss 0,2 --mb 40

Rows: goodput of one transfer alone on the path (four streams written as the daemon serves them) as a
fraction of the link; then ours sharing the link with a reno and a cubic flow (stand-ins for TCP): each
flow's share over the second half of a 10 s run. Target of issue 14: >= kernel TCP; neither flow < 1/3.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from kachery_p2p.quic.bbr import NAME as BBR
from kachery_p2p.quic.simlink import RATE_100M, run_shared, run_transfer

from .common import report

NAME = "cc-sim"


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench cc-sim")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--controllers", default=f"reno,cubic,{BBR}")
    parser.add_argument("--rtt", default="20,80", help="round-trip times in ms")
    parser.add_argument("--loss", default="0,0.5,2", help="random loss in %% (both directions)")
    parser.add_argument("--mb", type=float, default=None, help="MB per transfer (10, --quick 4)")
    parser.add_argument("--share-seconds", type=float, default=10.0)
    parser.add_argument("--no-share", action="store_true")
    parser.add_argument("--no-transfers", action="store_true", help="only the sharing rows")
    args, _ = parser.parse_known_args(argv)
    size = int((args.mb or (4 if args.quick else 10)) * 1e6)
    controllers = [] if args.no_transfers else args.controllers.split(",")
    results: list[dict[str, Any]] = []
    for rtt_ms in (float(x) for x in args.rtt.split(",")):
        for loss_pct in (float(x) for x in args.loss.split(",")):
            for name in controllers:
                started = time.monotonic()
                flow = run_transfer(name, rtt_ms / 1000, loss_pct / 100, size=size)
                fraction = flow.goodput_bps / RATE_100M
                took = time.monotonic() - started
                results.append(
                    report(
                        f"cc-sim {name} rtt={rtt_ms:g}ms loss={loss_pct:g}%",
                        round(fraction, 3),
                        "of link",
                        detail=f"{flow.goodput_bps / 1e6:.1f} Mbit/s, {size / 1e6:g} MB, run {took:.0f} s",
                    )
                )
    if not (args.quick or args.no_share):
        for rtt_ms in (float(x) for x in args.rtt.split(",")):
            for other in ("reno", "cubic"):
                ours, theirs = run_shared([BBR, other], rtt_ms / 1000, seconds=args.share_seconds)
                results.append(
                    report(
                        f"cc-sim share rtt={rtt_ms:g}ms {BBR} vs {other}",
                        round(min(ours.goodput_bps, theirs.goodput_bps) / RATE_100M, 3),
                        "of link (smaller flow)",
                        detail=f"{BBR} {ours.goodput_bps / 1e6:.1f} / {other} {theirs.goodput_bps / 1e6:.1f} Mbit/s",
                    )
                )
    return results
