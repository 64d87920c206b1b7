"""Downloads from several providers at once: the speed-up of 3 providers over 1 on links shaped to the same
rate (network namespaces, needs root), and the receiving daemon's peak RSS during a large download.

speed-up (skipped, with the reason, when the NAT lab cannot be built here): in the NAT lab of tests/netns,
three provider hosts and one receiver, all public hosts on the lab's bridge (no NAT). Each provider's link is
limited to --mbit (default 40) Mbit/s in each direction with ``Lab.set_rate`` (tc tbf); the receiver's link
is not limited. The receiver is bootstrapped to the three providers, all in one channel. It times
``kachery-p2p load --json`` of a file of --shaped-mib MiB (default 200, --quick 32) that only one provider
has, then of another file of the same size that all three have. Figure: MB/s with 3 providers; baseline: MB/s
with 1 provider in the same run; ratio = speed-up (aim: 2.5x). A run longer than --timeout is stopped and
reported as capped.

peak RSS (loopback, no root needed): two daemons on 127.0.0.1 (bench/daemons.py); A stores --mib MiB
(default 2048, --quick 256) and B loads it; B's VmHWM (/proc/<pid>/status, reset just before the load when
the kernel allows it) is read after the load and RSS is sampled every 0.1 s during it. Figure in MB, no
baseline (the issue asks for bounded memory: nothing held beyond the streams in flight).

    .venv/bin/python -m bench multi-provider                 # both parts
    .venv/bin/python -m bench multi-provider --no-peak-rss   # the speed-up only
    .venv/bin/python -m bench multi-provider --peak-rss      # the peak RSS only [--mib 2048]
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    RssSampler,
    bench_parser,
    measure_rss,
    pick_mib,
    report,
    reset_peak_rss,
    sha1_file,
    skip,
    write_payload,
)
from bench.daemon_transfer import load_on, store_payload
from bench.daemons import cleanup, start_daemon, wait_for_peer
from bench.netlab import lab_load, lab_modules, log_tail, netns_skip_reason, wait_for_channel_peer

NAME = "multi-provider"
MIB = 1 << 20


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(2048, 256))
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--peak-rss", action="store_true", help="only the peak-RSS part")
    parts.add_argument("--no-peak-rss", action="store_true", help="only the speed-up part")
    parser.add_argument("--shaped-mib", type=int, default=None, help="file size for the speed-up (200, --quick 32)")
    parser.add_argument("--mbit", type=float, default=40.0, help="each provider's link rate in Mbit/s (default 40)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="cap per load in s (default 300 for the speed-up, 900 for the peak RSS)")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    if not args.peak_rss:
        shaped_mib = args.shaped_mib or (32 if args.quick else 200)
        results += speed_up(shaped_mib, args.mbit, args.timeout or 300.0)
    if not args.no_peak_rss:
        results += peak_rss(pick_mib(args, 2048, 256), args.timeout or 900.0)
    return results


# -- 3 providers against 1, on shaped links ----------------------------------------------------------------


def speed_up(mib: int, mbit: float, cap: float) -> list[dict[str, Any]]:
    name = f"{NAME} speed-up"
    reason = netns_skip_reason()
    if reason:
        return [skip(name, reason)]
    lab_mod, nodes = lab_modules()
    link_mb_s = mbit * 1e6 / 8 / 1e6
    with tempfile.TemporaryDirectory(prefix="kp2p-bench-multi-") as tmp, lab_mod.Lab() as lab:
        work = Path(tmp)
        provider_hosts = [lab.add_public_host(f"p{i}") for i in (1, 2, 3)]
        receiver_host = lab.add_public_host("r")
        for host in provider_hosts:
            lab.set_rate(host, mbit)
        providers = [
            nodes.start_node(lab, host, work / host.name, host.name, "--port", str(nodes.NODE_PORT))
            for host in provider_hosts
        ]
        bootstrap = [arg for host in provider_hosts for arg in ("--bootstrap", f"{host.ip}:{nodes.NODE_PORT}")]
        receiver = nodes.start_node(lab, receiver_host, work / "r", "r", "--port", str(nodes.NODE_PORT), *bootstrap)
        for node in (*providers, receiver):
            node.cli("join-channel", "bench")
        for node in providers:
            wait_for_channel_peer(receiver, node.info()["nodeId"])

        def timed(holders: list[Any], what: str) -> Timed:
            """Store a fresh file on ``holders`` and time its load on the receiver."""
            source = work / f"payload-{os.urandom(4).hex()}.bin"
            sha1 = write_payload(source, mib)
            uris = {node.cli("store", str(source), timeout=300.0).stdout.strip() for node in holders}
            os.unlink(source)
            (uri,) = uris
            before = [int(node.info()["bytesServed"]) for node in providers]
            cpu_before = [cpu_seconds(node.proc.pid) for node in (receiver, *providers)]
            load = lab_load(receiver, uri, cap)
            cpu = [round(cpu_seconds(node.proc.pid) - b, 2) for node, b in zip((receiver, *providers), cpu_before,
                                                                                 strict=True)]
            print(f"[bench] {name}: {what}: {load.elapsed:.2f} s, CPU s receiver {cpu[0]}, providers {cpu[1:]}",
                  flush=True)
            # Where the command's fixed costs go: start-up and search (to the line naming the size), to the
            # first byte, the transfer, and from the done line to the command's exit.
            print(f"[bench] {name}: {what}: size known at {_fmt(load.first_line)} s, first byte at "
                  f"{_fmt(load.first_byte)} s, done at {_fmt(load.done)} s, exit at {load.elapsed:.3f} s", flush=True)
            served = [int(node.info()["bytesServed"]) - b for node, b in zip(providers, before, strict=True)]
            got = load.bytes_loaded if load.timed_out else mib * MIB
            if load.timed_out:
                print(f"[bench] {name}: {what} capped at {cap:g} s with {got / MIB:.1f} of {mib} MiB", flush=True)
            elif not load.ok or sha1_file(load.path or "") != sha1:
                raise RuntimeError(
                    f"{what} load failed: rc={load.rc}\n{load.stderr}\n--- receiver log\n{log_tail(receiver)}"
                )
            for line in receiver.log().splitlines():
                if "pieces of " + sha1 in line:
                    print(f"[bench] {name}: {what}: {line.split('pieces of ', 1)[1]}", flush=True)
            return Timed(got / 1e6 / load.elapsed, load.elapsed, load.transfer_seconds(), load.timed_out,
                         [round(x / 1e6, 1) for x in served])

        one = timed(providers[:1], "1-provider")
        three = timed(providers, "3-provider")
    config = f"{mib} MiB, each provider's link tbf {mbit:g} Mbit/s, receiver unshaped, public hosts (no NAT)"
    capped = one.capped or three.capped
    return [
        report(
            f"{NAME} 1 provider",
            one.mb_s,
            "MB/s",
            link_mb_s,
            baseline_is=f"one provider's link rate ({mbit:g} Mbit/s)",
            config=config + (f", CAPPED at {cap:g} s" if one.capped else ""),
            seconds=round(one.seconds, 2),
            transfer_s=_round(one.transfer_s),
            served_mb=one.served_mb,
            capped=one.capped,
        ),
        report(
            f"{NAME} 3 providers",
            three.mb_s,
            "MB/s",
            one.mb_s,
            target="ratio>=2.5",
            baseline_is="the same load from 1 provider, this run",
            config=config + (f", CAPPED at {cap:g} s" if capped else ""),
            seconds=round(three.seconds, 2),
            seconds_1_provider=round(one.seconds, 2),
            transfer_s=_round(three.transfer_s),
            transfer_speed_up=_round(one.transfer_s / three.transfer_s) if one.transfer_s and three.transfer_s
            else None,
            served_mb=three.served_mb,
            capped=three.capped,
        ),
    ]


@dataclass
class Timed:
    mb_s: float
    seconds: float  # the whole command, provider search included
    transfer_s: float | None  # first byte to done
    capped: bool
    served_mb: list[float]  # "bytesServed" increase of each provider (endgame copies included)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- peak RSS of the receiving daemon ---------------------------------------------------------------------


def peak_rss(mib: int, cap: float) -> list[dict[str, Any]]:
    a = start_daemon("multi-rss-a")
    b = None
    try:
        b = start_daemon("multi-rss-b", ["--bootstrap", f"127.0.0.1:{a.udp_port}"])
        for daemon in (a, b):
            daemon.cli("kachery-p2p-join-channel", "bench")
        wait_for_peer(b, a.info["nodeId"])
        uri, sha1 = store_payload(a, mib)
        before = measure_rss(b.proc.pid)["VmRSS"]
        hwm_reset = reset_peak_rss(b.proc.pid)
        with RssSampler(b.proc.pid) as sampler:
            load = load_on(b, uri, cap)
        hwm = measure_rss(b.proc.pid)["VmHWM"]
        if load.timed_out:
            raise RuntimeError(f"the {mib} MiB load did not finish within {cap:g} s ({load.bytes_loaded} bytes)")
        if not load.ok or sha1_file(load.path or "") != sha1:
            raise RuntimeError(f"the {mib} MiB load failed (rc={load.rc}): {load.stderr}")
        peak = max(hwm, sampler.peak)
        return [
            report(
                f"{NAME} peak RSS",
                peak / 1e6,
                "MB",
                None,
                config=f"receiving daemon, {mib} MiB load from 1 peer on loopback"
                + ("" if hwm_reset else ", VmHWM not reset: includes start-up"),
                rss_before_mb=round(before / 1e6, 1),
                sampled_peak_mb=round(sampler.peak / 1e6, 1),
                seconds=round(load.elapsed, 2),
                load_mb_s=round(mib * MIB / 1e6 / load.elapsed, 2),
            )
        ]
    finally:
        cleanup(*(d for d in (a, b) if d is not None))
