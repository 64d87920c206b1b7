"""(g) Goodput of a daemon-to-daemon load of N MiB over a link shaped to 100 Mbit/s (tc tbf), without loss and
with 1% random loss (iptables statistic), as a fraction of the link rate. Needs root.

Two public hosts of the NAT lab (tests/netns/lab.py) on its bridge, no NAT; both links are shaped with
``Lab.set_rate`` (tbf, each direction), and for the lossy run the receiver's link drops 1% of packets at
random in each direction (``Lab.set_loss``: data and acknowledgements alike). A daemon on each host (B
bootstrapped to A, one channel); for each run A stores a new file of N MiB (default 256, --quick 32) and B
times ``kachery-p2p load --json URI``. Goodput = bytes / wall clock of the command; the baseline is the link
rate (100 Mbit/s = 12.5 MB/s), so the ratio is the fraction of it. A run that takes longer than --timeout
(default 180 s) is stopped and reported with what it had reached (``capped=True``).

    .venv/bin/python -m bench shaped-load [--mib 256] [--quick] [--mbit 100] [--loss 0,0.01]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import bench_parser, pick_mib, report, sha1_file, skip, write_payload
from bench.netlab import lab_load, lab_modules, log_tail, netns_skip_reason, start_lan_node, wait_for_channel_peer

NAME = "shaped-load"
MIB = 1 << 20
TARGETS = {0.0: "ratio>=0.9", 0.01: "ratio>=0.5"}


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(256, 32))
    parser.add_argument("--mbit", type=float, default=100.0, help="link rate in Mbit/s (default 100)")
    parser.add_argument("--loss", default="0,0.01", help="comma-separated loss probabilities (default 0,0.01)")
    parser.add_argument("--timeout", type=float, default=None, help="cap per run in s (default 180, --quick 60)")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 256, 32)
    cap = args.timeout or (60.0 if args.quick else 180.0)
    losses = [float(x) for x in args.loss.split(",") if x.strip()]
    reason = netns_skip_reason()
    if reason:
        return [skip(NAME, reason)]
    link_mb_s = args.mbit * 1e6 / 8 / 1e6
    lab_mod, _ = lab_modules()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-shaped-") as tmp, lab_mod.Lab() as lab:
        work = Path(tmp)
        host_a, host_b = lab.add_public_host("a"), lab.add_public_host("b")
        for host in (host_a, host_b):
            lab.set_rate(host, args.mbit)
        a = start_lan_node(lab, host_a, work / "a", "a")
        b = start_lan_node(lab, host_b, work / "b", "b", bootstrap=host_a)
        for node in (a, b):
            node.cli("join-channel", "bench")
        wait_for_channel_peer(b, a.info()["nodeId"])
        for loss in losses:
            lab.set_loss(host_b, loss)
            source = work / f"payload-{os.urandom(4).hex()}.bin"
            sha1 = write_payload(source, mib)
            uri = a.cli("store", str(source)).stdout.strip()
            os.unlink(source)
            load = lab_load(b, uri, cap)
            capped = load.timed_out
            if not capped and (not load.ok or sha1_file(load.path or "") != sha1):
                raise RuntimeError(
                    f"shaped load (loss {loss:g}) failed: rc={load.rc} bytes={load.bytes_loaded}\n{load.stderr}\n"
                    f"--- receiver log\n{log_tail(b)}\n--- sender log\n{log_tail(a)}"
                )
            got = mib * MIB if not capped else load.bytes_loaded
            if capped:
                print(
                    f"[bench] {NAME}: loss {loss:g} run capped at {cap:g} s with {got / MIB:.1f} of {mib} MiB "
                    f"(receiver log tail:)\n{log_tail(b, 10)}",
                    flush=True,
                )
            transfer = load.transfer_seconds()
            results.append(
                report(
                    f"{NAME} loss {loss * 100:g}%",
                    got / 1e6 / load.elapsed,
                    "MB/s",
                    link_mb_s,
                    target=TARGETS.get(loss),
                    baseline_is=f"link rate {args.mbit:g} Mbit/s",
                    config=f"{mib} MiB, tbf {args.mbit:g} Mbit/s both hosts, {loss * 100:g}% random loss at receiver"
                    + (f", CAPPED at {cap:g} s" if capped else ""),
                    seconds=round(load.elapsed, 2),
                    capped=capped,
                    mib_reached=round(got / MIB, 1),
                    ttfb_ms=round((load.first_byte or 0) * 1000, 1),
                    transfer_mb_s=round(got / 1e6 / transfer, 2) if transfer else None,
                )
            )
            lab.set_loss(host_b, 0.0)
    return results
