"""aioquic's per-packet CPU cost in memory (no sockets): CPU-seconds per GB on the sender and on the
receiver, kachery-p2p's fast path (``kachery_p2p/quic/fastpath.py``) on vs off, reno and kachery-bbr.

    python -m bench quic-cpu              # 48 MiB per run, 3 runs per cell, the best of each kept
    python -m bench quic-cpu --quick      # 16 MiB, 2 runs
    python -m bench quic-cpu --mib 96 --repeat 5 --size 1472

Two ``KacheryQuicConnection`` in one process: the client writes one stream in 64 KiB pieces (up to 2 MiB
buffered), every datagram it sends is handed to the server, every one the server sends back to the
client; the clock advances 0.5 ms per round. CPU time (``time.process_time``) is charged to the side
whose code ran, so the figure does not depend on the machine's load. The baseline of each row is the
same cell with ``KACHERY_P2P_QUIC_FASTPATH=0`` (stock aioquic code) in the same run. Target of issue 14:
half of today's CPU-s/GB on each side.
"""

from __future__ import annotations

import os
import time
from typing import Any

from aioquic.quic import events

from kachery_p2p.quic.bbr import NAME as BBR
from kachery_p2p.quic.fastpath import ENV_SWITCH
from kachery_p2p.quic.flow import KacheryQuicConnection
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.quic.settings import quic_configuration

from .common import bench_parser, pick_mib, report

NAME = "quic-cpu"
CLIENT = ("10.0.0.1", 1000)
SERVER = ("10.0.0.2", 2000)
STEP = 0.0005
CHUNK = b"x" * 65536
BUFFERED = 2 * 1024 * 1024


def measure(cc: str, total: int, size: int, fast: bool) -> tuple[float, float]:
    """CPU seconds of the sender and of the receiver moving ``total`` bytes on one stream."""
    previous = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "1" if fast else "0"
    try:
        client_config = quic_configuration(
            NodeIdentity.generate(), is_client=True, max_datagram_size=size, congestion_control=cc
        )
        server_config = quic_configuration(
            NodeIdentity.generate(), is_client=False, max_datagram_size=size, congestion_control=cc
        )
        now = 1000.0
        client = KacheryQuicConnection(configuration=client_config)
        client.connect(SERVER, now=now)
        server = KacheryQuicConnection(
            configuration=server_config, original_destination_connection_id=client.original_destination_connection_id
        )
    finally:
        if previous is None:
            del os.environ[ENV_SWITCH]
        else:
            os.environ[ENV_SWITCH] = previous
    for _ in range(200):  # handshake
        if client._handshake_confirmed and server._handshake_complete:
            break
        now += 0.001
        for data, _addr in client.datagrams_to_send(now=now):
            server.receive_datagram(data, CLIENT, now=now)
        for data, _addr in server.datagrams_to_send(now=now):
            client.receive_datagram(data, SERVER, now=now)
    for conn in (client, server):
        for _event in iter(conn.next_event, None):
            pass
    stream_id = client.get_next_available_stream_id()
    sent = got = 0
    tx = rx = 0.0
    while got < total:
        started = time.process_time()
        while sent < total and (
            stream_id not in client._streams or len(client._streams[stream_id].sender._buffer) < BUFFERED
        ):
            client.send_stream_data(stream_id, CHUNK, end_stream=sent + len(CHUNK) >= total)
            sent += len(CHUNK)
        out = client.datagrams_to_send(now=now)
        for _event in iter(client.next_event, None):
            pass
        middle = time.process_time()
        tx += middle - started
        for data, _addr in out:
            server.receive_datagram(data, CLIENT, now=now)
        for event in iter(server.next_event, None):
            if isinstance(event, events.StreamDataReceived):
                got += len(event.data)
        back = server.datagrams_to_send(now=now)
        after = time.process_time()
        rx += after - middle
        for data, _addr in back:
            client.receive_datagram(data, SERVER, now=now)
        tx += time.process_time() - after
        now += STEP
    return tx, rx


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__ or "", mib=(48, 16))
    parser.add_argument("--repeat", type=int, default=None, help="runs per cell, best kept (3, --quick 2)")
    parser.add_argument("--size", type=int, default=1472, help="datagram size (MTU 1500 IPv4: 1472)")
    parser.add_argument("--controllers", default=f"reno,{BBR}")
    args, _ = parser.parse_known_args(argv)
    total = pick_mib(args, 48, 16) * 1024 * 1024
    repeat = args.repeat or (2 if args.quick else 3)
    gb = total / 1e9
    results: list[dict[str, Any]] = []
    for cc in args.controllers.split(","):
        best: dict[bool, list[float]] = {True: [1e9, 1e9], False: [1e9, 1e9]}
        for _ in range(repeat):
            for fast in (False, True):  # interleaved, so a change of machine load hits both columns
                tx, rx = measure(cc, total, args.size, fast)
                best[fast] = [min(best[fast][0], tx / gb), min(best[fast][1], rx / gb)]
        for index, side in enumerate(("sender", "receiver")):
            on, off = best[True][index], best[False][index]
            results.append(
                report(
                    f"quic-cpu {cc} {side}",
                    round(on, 1),
                    "CPU-s/GB",
                    round(off, 1),
                    baseline_is="fast path off (stock aioquic), same run",
                    target="ratio<=0.5",
                    detail=f"{total / 1048576:g} MiB in memory, {args.size}-byte datagrams, best of {repeat}",
                )
            )
    return results
