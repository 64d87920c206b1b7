"""Issue 10 #4: RSS of a real daemon serving peers that stop reading.

A daemon stores a big file (``--mib``, default 64) and joins a channel. ``--sessions`` clients (default
4), each a real QUIC session from its own node key in that channel, ask for the whole file ``--streams``
times (default 64) and, once the daemon has started answering, stop receiving anything (their endpoints
drop every datagram from then on: no ACKs, no flow-control credit, like a peer whose process stopped
reading). The daemon's RSS is sampled every 0.1 s: before, the peak while they stall for ``--hold``
seconds (default 20, under the 30 s stall timeout; 40 shows the timeout resetting the streams while the
sessions stay open), and after the clients close their sessions (lowest and last over ``--after``
seconds, default 5). The issue measured 4 x 64 streams: 59 -> 1,137 MB, 684 MB after they closed.

    python -m bench stalled-readers
    python -m bench stalled-readers --daemon-src /tmp/old   # another version of the package (PYTHONPATH)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.common import bench_parser, measure_rss, pick_mib, report, write_payload
from bench.daemons import BenchDaemon, cleanup, start_daemon
from kachery_p2p.daemon.endpoint import Link, QuicEndpoint
from kachery_p2p.daemon.session import PeerSession
from kachery_p2p.errors import RemoteProtocolError
from kachery_p2p.quic import messages
from kachery_p2p.quic.identity import NodeIdentity

NAME = "stalled-readers"


def _refuse_link(link: Link) -> None:
    # Closed once the endpoint has set the new connection up (closing inside on_incoming is too early).
    asyncio.get_running_loop().call_soon(link.close, "not accepting")


async def _refuse(session: PeerSession, request: messages.Request) -> Any:
    raise RemoteProtocolError("a stalled reader serves nothing", code="not_authorized")


class StalledReader:
    """One session that asks for ``streams`` ranges, then drops everything it receives."""

    def __init__(self, channel: str) -> None:
        self.identity = NodeIdentity.generate()
        self.channel = channel
        self.endpoint = QuicEndpoint(self.identity, on_incoming=_refuse_link)
        self.session: PeerSession | None = None
        self.requests: list[asyncio.Future[Any]] = []
        self.started_streams: set[int] = set()
        self.answered = 0  # requests that ended (busy, error) before the stall
        self.endings: dict[str, int] = {}  # how they ended (error code) -> count

    async def connect(self, port: int, node_id: str) -> None:
        await self.endpoint.open("127.0.0.1", 0)
        link = self.endpoint.connect(("127.0.0.1", port))
        self.session = PeerSession(link, self.identity, "stalled", lambda: [self.channel], _refuse, node_id)
        await self.session.authenticate(30)

    def ask(self, sha1: str, size: int, streams: int) -> None:
        assert self.session is not None
        for index in range(streams):
            def sink(block: bytes, index: int = index) -> None:
                self.started_streams.add(index)

            request = asyncio.ensure_future(self.session.request(
                {"op": "get", "sha1": sha1, "start": 0, "end": size}, sink=sink))
            request.add_done_callback(self._ended)
            self.requests.append(request)

    def _ended(self, request: asyncio.Future[Any]) -> None:
        self.answered += 1
        if request.cancelled():
            return
        exc = request.exception()
        if exc is not None:
            what = f"{type(exc).__name__}: {exc}"
        else:
            header = request.result()[0]
            what = "ok" if header.get("ok") is True else str(header.get("code"))
        self.endings[what] = self.endings.get(what, 0) + 1

    def stall(self) -> None:
        """From now on nothing received reaches QUIC: the daemon's data is never acknowledged."""
        self.endpoint.datagram_received = lambda data, addr: None  # type: ignore[method-assign]

    async def close(self) -> None:
        for request in self.requests:
            request.cancel()
        await asyncio.gather(*self.requests, return_exceptions=True)
        if self.session is not None:
            self.session.close("bench over")
        await asyncio.sleep(0.1)  # the CONNECTION_CLOSE leaves
        self.endpoint.close()


async def _scenario(daemon: BenchDaemon, channel: str, sha1: str, size: int, args: Any) -> dict[str, Any]:
    pid = daemon.proc.pid
    rss: list[tuple[float, int]] = []
    started = time.monotonic()

    def sample() -> int:
        value = measure_rss(pid)["VmRSS"]
        rss.append((time.monotonic() - started, value))
        return value

    before = sample()
    readers = [StalledReader(channel) for _ in range(args.sessions)]
    out: dict[str, Any] = {"before": before}
    try:
        await asyncio.gather(*(r.connect(daemon.udp_port, daemon.info["nodeId"]) for r in readers))
        for reader in readers:
            reader.ask(sha1, size, args.streams)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            len(r.started_streams) + r.answered < args.streams for r in readers
        ):
            await asyncio.sleep(0.02)
        out["started"] = sum(len(r.started_streams) for r in readers)
        out["refused"] = sum(r.answered for r in readers)
        endings: dict[str, int] = {}
        for reader in readers:
            for what, n in reader.endings.items():
                endings[what] = endings.get(what, 0) + n
        out["endings"] = endings
        out["per_session"] = [(len(r.started_streams), r.answered) for r in readers]
        print(f"[{NAME}] requests that ended before the stall: {endings}; per session (streams receiving, "
              f"requests ended): {out['per_session']}", flush=True)
        for reader in readers:
            reader.stall()
        stalled_at = time.monotonic()
        while time.monotonic() < stalled_at + args.hold:
            sample()
            await asyncio.sleep(0.1)
        out["during"] = max(v for t, v in rss)
        out["end_of_hold"] = rss[-1][1]
    finally:
        await asyncio.gather(*(r.close() for r in readers), return_exceptions=True)
    closed_at = time.monotonic()
    after: list[int] = []
    while time.monotonic() < closed_at + args.after:
        after.append(sample())
        await asyncio.sleep(0.1)
    out["after_min"], out["after_last"] = min(after), after[-1]
    out["after_every_5s"] = [round(after[i] / 1e6) for i in range(0, len(after), 50)]  # samples 0.1 s apart
    return out


async def _rounds(daemon: BenchDaemon, channel: str, sha1: str, size: int, args: Any) -> list[dict[str, Any]]:
    """The scenario ``--rounds`` times on the same daemon: a later round's peak no higher than the first's
    says the memory kept after a round is reused, not leaked."""
    return [await _scenario(daemon, channel, sha1, size, args) for _ in range(max(1, args.rounds))]


def run(argv: list[str]) -> list[dict[str, Any]]:
    parser = bench_parser(NAME, __doc__.splitlines()[0], mib=(64, 16))
    parser.add_argument("--sessions", type=int, default=4, help="stalled sessions (default 4)")
    parser.add_argument("--streams", type=int, default=64, help="ranges each session asks for (default 64)")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds they stall before closing (default 20)")
    parser.add_argument("--after", type=float, default=5.0, help="seconds sampled after they closed (default 5)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="times the sessions come back to the same daemon (default 2; --quick 1)")
    parser.add_argument("--daemon-src", default=None,
                        help="directory put first on the daemon's PYTHONPATH (another version of kachery_p2p)")
    args = parser.parse_args(argv)
    mib = pick_mib(args, 64, 16)
    if args.quick:
        args.hold, args.after, args.streams = min(args.hold, 3.0), min(args.after, 2.0), min(args.streams, 16)
        args.rounds = 1
    env = {"PYTHONPATH": args.daemon_src} if args.daemon_src else None
    daemon = start_daemon("stalled", [], env_extra=env)
    try:
        channel = f"stalled-{uuid.uuid4().hex[:8]}"
        daemon.cli("kachery-p2p-join-channel", channel)
        source = daemon.root / "big.bin"
        sha1 = write_payload(source, mib)
        daemon.cli("kachery-p2p-store", str(source))
        source.unlink()
        time.sleep(1.0)
        outs = asyncio.run(_rounds(daemon, channel, sha1, mib << 20, args))
        out = outs[0]
        peers = daemon.cli("kachery-p2p-peers", "--json").stdout.decode().splitlines()
        out["peers_after"] = sum(1 for line in peers if line.strip())
        alive = daemon.proc.poll() is None
    finally:
        cleanup(daemon)
    which = f"package from {args.daemon_src}" if args.daemon_src else "this checkout"
    config = (f"{args.sessions} sessions x {args.streams} streams asking {mib} MiB each, stalled {args.hold:.0f} s; "
              f"daemon: {which}")
    mb = 1e6
    return [
        report(f"{NAME} daemon RSS peak", out["during"] / mb, "MB", out["before"] / mb,
               baseline_is="the same daemon before the sessions", config=config,
               streams_started=out["started"], requests_ended_before_stall=out["refused"],
               rss_at_end_of_hold_mb=round(out["end_of_hold"] / mb, 1), daemon_alive=alive),
        report(f"{NAME} daemon RSS after close", out["after_last"] / mb, "MB", out["before"] / mb,
               baseline_is="the same daemon before the sessions", config=config,
               lowest_mb=round(out["after_min"] / mb, 1), seconds_after=args.after,
               peers_listed_after=out["peers_after"], mb_every_5s_after_close=out["after_every_5s"]),
    ] + [
        report(f"{NAME} daemon RSS round {i + 2}", later["during"] / mb, "MB", out["during"] / mb,
               baseline_is="the first round's peak, same daemon", config=config,
               rss_before_mb=round(later["before"] / mb, 1), rss_after_close_mb=round(later["after_last"] / mb, 1))
        for i, later in enumerate(outs[1:])
    ]
