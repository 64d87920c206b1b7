"""(c) Daemon-to-daemon `kachery-p2p load` of N MiB between two network namespaces on a LAN (veths with
MTU 1500 on one bridge), as a ratio to raw aioquic (a) run over the same pair. Needs root.

Two public hosts of the NAT lab (tests/netns/lab.py): A (sender) and B (receiver) sit on the lab's bridge,
each through a veth pair with MTU 1500, no NAT, no shaping. First raw aioquic, one stream, default
settings: its receiver in B's namespace bound to B's address, its sender in A's. Then a daemon in each
namespace (B bootstrapped to A, both in one channel, no LAN discovery); A stores N MiB and B times
``kachery-p2p load --json URI`` (wall clock of the command, which includes the provider search).

    .venv/bin/python -m bench lan-load [--mib 256] [--quick]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from bench import raw_aioquic
from bench.common import bench_parser, pick_mib, report, sha1_file, skip, write_payload
from bench.netlab import (
    lab_load,
    lab_modules,
    link_mtu,
    log_tail,
    netns_skip_reason,
    start_lan_node,
    wait_for_channel_peer,
)

NAME = "lan-load"
MIB = 1 << 20


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(256, 32))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the load")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 256, 32)
    reason = netns_skip_reason()
    if reason:
        return [skip(NAME, reason)]
    lab_mod, _ = lab_modules()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-lan-") as tmp, lab_mod.Lab() as lab:
        work = Path(tmp)
        host_a, host_b = lab.add_public_host("a"), lab.add_public_host("b")
        mtu = link_mtu(host_b)
        where = f"netns LAN veth MTU {mtu}"
        wrap_a, wrap_b = " ".join(host_a.exec_argv([])), " ".join(host_b.exec_argv([]))
        base, _ = raw_aioquic.baseline(
            mib,
            where,
            ["--name", "lan-raw-aioquic", "--bind", host_b.ip, "--receiver-wrap", wrap_b, "--sender-wrap", wrap_a],
        )
        results.append(base)  # a LAN baseline is never measured by another benchmark: always show it
        a = start_lan_node(lab, host_a, work / "a", "a")
        b = start_lan_node(lab, host_b, work / "b", "b", bootstrap=host_a)
        for node in (a, b):
            node.cli("join-channel", "bench")
        peer = wait_for_channel_peer(b, a.info()["nodeId"])
        source = work / "payload.bin"
        sha1 = write_payload(source, mib)
        uri = a.cli("store", str(source)).stdout.strip()
        os.unlink(source)
        load = lab_load(b, uri, args.timeout)
        if not load.ok or sha1_file(load.path or "") != sha1:
            raise RuntimeError(
                f"LAN load failed: rc={load.rc} timed_out={load.timed_out} bytes={load.bytes_loaded}\n"
                f"{load.stderr}\n--- receiver log\n{log_tail(b)}\n--- sender log\n{log_tail(a)}"
            )
        transfer = load.transfer_seconds()
        results.append(
            report(
                NAME,
                mib * MIB / 1e6 / load.elapsed,
                "MB/s",
                base["value"],
                target="ratio>=1.3",
                baseline_is=f"lan-raw-aioquic {mib} MiB, same pair",
                config=f"{mib} MiB, {where}, 2 daemons, CLI load (includes provider search)",
                seconds=round(load.elapsed, 3),
                ttfb_ms=round((load.first_byte or 0) * 1000, 1),
                transfer_mb_s=round(mib * MIB / 1e6 / transfer, 2) if transfer else None,
                path=peer.get("path"),
            )
        )
    return results
