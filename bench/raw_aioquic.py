"""Baseline: raw aioquic, one bidirectional stream, default QuicConfiguration, N MiB, two processes.

The receiver is the QUIC server (it binds, prints its port as stdout line one); the sender is the
client: it opens one stream, writes N MiB from a reusable 64 KiB buffer and sends FIN. The receiver
reads to FIN, hashes what it got (sha1), replies with {"bytes", "sha1"} and prints its result JSON.
Throughput is measured at the receiver from HandshakeCompleted to the last byte.

Only what aioquic requires is configured: a self-signed Ed25519 cert (made at start-up), an ALPN,
CERT_NONE on the client; plus --max-datagram-size when asked. The event loop clock is the stock one
(``loop.time()``), so --uvloop shows whether uvloop's millisecond clock hurts aioquic's pacing.

    .venv/bin/python -m bench.raw_aioquic --mib 256 [--max-datagram-size 1452] [--uvloop]
    .venv/bin/python -m bench.raw_aioquic --role receiver --bind 10.0.0.2 --port 0
    .venv/bin/python -m bench.raw_aioquic --role sender --connect 10.0.0.2 --port 4433

Within one ``python -m bench`` process the results are kept (``baseline()``), so a benchmark that
reports a ratio to this baseline reuses the figure measured earlier in the same run instead of
measuring it twice.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import shlex
import ssl
import sys
from collections.abc import Coroutine
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from bench.common import (
    Usage,
    kill_all,
    last_json,
    make_cert,
    measure_rss,
    read_line,
    report,
    run_processes,
    start_process,
)

NAME = "raw-aioquic"
ALPN = "kachery-bench"
CHUNK = 64 * 1024
MIB = 1024 * 1024
# Sender back-pressure: keep at most this many written-but-unacknowledged bytes in aioquic's stream
# buffer (2x the default 1 MiB stream window, so flow control, not us, is what limits the rate).
# asyncio.StreamWriter.drain() is a no-op on aioquic streams: without this all N MiB are queued at once.
HIGH_WATER = 2 * MIB


def make_config(is_client: bool, max_datagram_size: int | None) -> QuicConfiguration:
    cfg = QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN])
    if max_datagram_size:
        cfg.max_datagram_size = max_datagram_size
    if is_client:
        cfg.verify_mode = ssl.CERT_NONE
    else:
        cfg.certificate, cfg.private_key = make_cert()
    return cfg


class _ReceiverProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *, state: _RxState) -> None:
        super().__init__(quic, stream_handler)
        self.state = state
        state.protocol = self

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted) and self.state.start is None:
            self.state.start = Usage()
        super().quic_event_received(event)


class _RxState:
    def __init__(self) -> None:
        self.start: Usage | None = None
        self.protocol: _ReceiverProtocol | None = None
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[None]] = set()


async def _consume(state: _RxState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    h = hashlib.sha1()
    n = 0
    while chunk := await reader.read(MIB):
        h.update(chunk)
        n += len(chunk)
    end = Usage()
    assert state.start is not None
    result: dict[str, Any] = {"role": "receiver", "bytes": n, "sha1": h.hexdigest(), **end.since(state.start)}
    writer.write(json.dumps({"bytes": n, "sha1": result["sha1"]}).encode())
    writer.write_eof()
    if not state.done.done():
        state.done.set_result(result)


async def run_receiver(args: argparse.Namespace) -> dict[str, Any]:
    state = _RxState()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(_consume(state, reader, writer))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    server = await serve(
        args.bind,
        args.port,
        configuration=make_config(False, args.max_datagram_size),
        create_protocol=functools.partial(_ReceiverProtocol, state=state),
        stream_handler=on_stream,
    )
    try:
        transport = server._transport  # private: serve() does not expose the bound socket
        assert transport is not None
        port = transport.get_extra_info("sockname")[1]
        print(port, flush=True)
        result = await asyncio.wait_for(state.done, args.timeout)
        if state.protocol is not None:  # the sender closes once it has our reply
            try:
                await asyncio.wait_for(state.protocol.wait_closed(), 10)
            except asyncio.TimeoutError:
                result["warning"] = "sender did not close within 10 s"
    finally:
        server.close()
    return result


class _SenderProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.watch_stream: int | None = None
        self.below_high_water = asyncio.Event()

    def unacked(self) -> int:
        """Bytes written to the watched stream and not yet acknowledged (private aioquic state)."""
        stream = self._quic._streams.get(self.watch_stream) if self.watch_stream is not None else None
        if stream is None:
            return 0
        return int(stream.sender._buffer_stop - stream.sender._buffer_start)

    def transmit(self) -> None:
        super().transmit()  # runs after every received datagram (ACKs) and timer
        if self.watch_stream is not None and self.unacked() <= HIGH_WATER:
            self.below_high_water.set()


def expected_sha1(buf: bytes, total: int) -> str:
    h = hashlib.sha1()
    full, rest = divmod(total, len(buf))
    for _ in range(full):
        h.update(buf)
    h.update(buf[:rest])
    return h.hexdigest()


async def run_sender(args: argparse.Namespace) -> dict[str, Any]:
    total = args.mib * MIB
    buf = os.urandom(CHUNK)
    want = expected_sha1(buf, total)
    async with connect(
        args.connect,
        args.port,
        configuration=make_config(True, args.max_datagram_size),
        create_protocol=_SenderProtocol,
    ) as proto:
        assert isinstance(proto, _SenderProtocol)
        start = Usage()
        reader, writer = await proto.create_stream()
        proto.watch_stream = writer.get_extra_info("stream_id")
        remaining = total
        while remaining:
            n = min(CHUNK, remaining)
            writer.write(buf if n == CHUNK else buf[:n])
            remaining -= n
            await writer.drain()
            if proto.unacked() > HIGH_WATER:
                proto.below_high_water.clear()
                await proto.below_high_water.wait()
        writer.write_eof()
        reply = json.loads(await asyncio.wait_for(reader.read(), args.timeout))
        end = Usage()
    ok = reply["bytes"] == total and reply["sha1"] == want
    return {"role": "sender", "bytes": total, "sha1": want, "sha1_ok": ok, **end.since(start)}


def _child_argv(args: argparse.Namespace, role: str, extra: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "bench.raw_aioquic", "--role", role, "--mib", str(args.mib)]
    argv += ["--timeout", str(args.timeout), "--uvloop" if args.uvloop else "--no-uvloop"]
    if args.max_datagram_size:
        argv += ["--max-datagram-size", str(args.max_datagram_size)]
    return argv + extra


def run_pair(args: argparse.Namespace) -> dict[str, Any]:
    """Start receiver then sender as separate processes; return the reported result dict."""
    rx = start_process(
        _child_argv(args, "receiver", ["--bind", args.bind, "--port", str(args.port)]),
        shlex.split(args.receiver_wrap),
    )
    procs = [rx]
    try:
        port = int(read_line(rx, 30))
        connect_host = args.connect or args.bind
        tx = start_process(
            _child_argv(args, "sender", ["--connect", connect_host, "--port", str(port)]),
            shlex.split(args.sender_wrap),
        )
        procs.append(tx)
        (tx_rc, tx_out, tx_err), (rx_rc, rx_out, rx_err) = run_processes([tx, rx], args.timeout + 30)
    finally:
        kill_all(procs)
    if tx_rc or rx_rc:
        raise RuntimeError(
            f"sender rc={tx_rc} receiver rc={rx_rc}\n--- sender\n{tx_err}\n--- receiver\n{rx_err}"
        )
    s, r = last_json(tx_out), last_json(rx_out)
    if not (s["sha1_ok"] and r["sha1"] == s["sha1"] and r["bytes"] == s["bytes"]):
        raise RuntimeError(f"integrity check failed: sender {s} receiver {r}")
    mds = args.max_datagram_size or "default"
    config = f"1 stream, {args.mib} MiB, mds={mds}, {'uvloop' if args.uvloop else 'asyncio'}, {args.where}"
    return report(
        args.name,
        r["bytes"] / 1e6 / r["seconds"],
        "MB/s",
        None,
        config=config,
        seconds=round(r["seconds"], 3),
        receiver_cpu_pct=round(r["cpu_pct"], 1),
        receiver_cpu_sys_s=round(r["cpu_sys_s"], 3),
        sender_cpu_pct=round(s["cpu_pct"], 1),
        udp_rcvbuf_drops=r["udp_rcvbuf_drops"],
        receiver_hwm_bytes=r.get("hwm_bytes"),
        sender_hwm_bytes=s.get("hwm_bytes"),
        sha1=r["sha1"],
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.raw_aioquic", description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["both", "receiver", "sender"], default="both")
    p.add_argument("--mib", type=int, default=None, help="MiB to send (default 256, --quick 32)")
    p.add_argument("--max-datagram-size", type=int, default=None, help="default: aioquic's (1200)")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--bind", default="127.0.0.1", help="receiver bind address")
    p.add_argument("--port", type=int, default=0, help="receiver: bind port; sender: port to connect to")
    p.add_argument("--connect", default=None, help="sender: receiver's address (default: --bind)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the transfer (default 600)")
    p.add_argument("--repeat", type=int, default=1, help="parent: run the pair this many times")
    p.add_argument("--receiver-wrap", default="", help='e.g. "ip netns exec ns-a"')
    p.add_argument("--sender-wrap", default="", help='e.g. "ip netns exec ns-b"')
    p.add_argument("--name", default=NAME, help="name of the reported figure")
    p.add_argument("--where", default="loopback", help="the path, for the report (and the baseline cache)")
    p.add_argument("--quick", action="store_true", help="--mib 32 unless --mib is given")
    return p


def _run_loop(coro: Coroutine[Any, Any, dict[str, Any]], use_uvloop: bool, timeout: float) -> dict[str, Any]:
    bounded = asyncio.wait_for(coro, timeout)  # a dead connection must not hang the child
    if use_uvloop:
        import uvloop

        return uvloop.run(bounded)
    return asyncio.run(bounded)


def parse(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.mib is None:
        args.mib = 32 if args.quick else 256
    return args


# Same-run baselines: (where, MiB) -> result dict of a stock run (default datagram size, asyncio).
_BASELINES: dict[tuple[str, int], dict[str, Any]] = {}


def _is_stock(args: argparse.Namespace) -> bool:
    return not args.max_datagram_size and not args.uvloop


def run(argv: list[str]) -> list[dict[str, Any]]:
    """Registry entry: run the pair ``--repeat`` times in fresh processes; return result dicts.
    Stock runs (default settings) are remembered as the baseline for their path and size."""
    args = parse(argv)
    results = [run_pair(args) for _ in range(args.repeat)]
    if _is_stock(args) and results:
        _BASELINES[(args.where, args.mib)] = results[-1]
    return results


def baseline(mib: int, where: str = "loopback", argv: list[str] | None = None) -> tuple[dict[str, Any], bool]:
    """The stock raw-aioquic result for ``mib`` MiB over ``where``, measured earlier in this process if it
    was, else measured now (``argv`` adds e.g. --bind and wraps for a netns path). Returns (result, fresh)."""
    key = (where, mib)
    if key in _BASELINES:
        result = _BASELINES[key]
        print(f"[bench] reusing this run's {result['bench']} baseline ({mib} MiB, {where}): "
              f"{result['value']:.2f} {result['unit']}", flush=True)
        return result, False
    results = run(["--mib", str(mib), "--where", where, *(argv or [])])
    return results[-1], True


def any_baseline() -> dict[str, Any] | None:
    """Any stock loopback result measured in this process (for figures that only need its memory)."""
    for (where, _), result in _BASELINES.items():
        if where == "loopback":
            return result
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.role == "both":
        run(sys.argv[1:] if argv is None else argv)
        return 0
    if args.role == "sender" and not args.connect:
        args.connect = "127.0.0.1"
    coro = run_receiver(args) if args.role == "receiver" else run_sender(args)
    result = _run_loop(coro, args.uvloop, args.timeout + 15)
    result["hwm_bytes"] = measure_rss(os.getpid()).get("VmHWM")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
