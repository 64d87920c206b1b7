"""A bottleneck link in memory with a simulated clock, to evaluate congestion controllers quickly and
deterministically (sans-IO: nothing here sleeps or opens a socket).

Real aioquic ``QuicConnection`` pairs exchange datagrams through a model of a WAN path: each direction
is a FIFO served at ``rate_bps`` with a tail-drop queue of ``queue_bytes``, then ``one_way`` seconds of
propagation delay; random loss (seeded ``random.Random``) drops a datagram before it reaches the queue,
as the lab's ``iptables -m statistic`` rule does. Several flows can share one bottleneck (fairness).

Each flow is one client sending ``size`` bytes (or without end, for a fixed time) on ``streams`` streams
to its server, written as the daemon's serving path writes (``daemon/link.py``): 256 KiB blocks, the
writer waiting while more than 1 MiB of a stream is unacknowledged, until it is down to 256 KiB.
Goodput counts bytes the receiving application got, from the first byte written to the last one read.

    run_transfer(controller="reno", rtt=0.08, loss=0.005, size=40_000_000)  -> FlowResult
    run_shared(["bbr", "cubic"], rtt=0.04, seconds=20)                   -> [FlowResult, FlowResult]
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from .flow import KacheryQuicConnection
from .identity import NodeIdentity
from .settings import quic_configuration, stream_send_buffered

RATE_100M = 100e6
BLOCK = 256 * 1024
HIGH_WATER = 1 << 20
LOW_WATER = 256 * 1024
CHATTER = 200  # bytes of one message of the chatter before the bulk
_IDENTITY: list[NodeIdentity] = []


@dataclass
class Bottleneck:
    """One direction of the path: loss, then a tail-drop FIFO at ``rate_bps``, then ``one_way`` delay.
    With ``wake_every`` the far end reads its socket only at multiples of it (a busy event loop that
    wakes every few milliseconds and takes everything that arrived at once)."""

    rate_bps: float
    one_way: float
    queue_bytes: int
    loss: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    _busy_until: float = 0.0
    _queue: deque[tuple[float, int]] = field(default_factory=deque)
    _queued: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    max_queued: int = 0
    wake_every: float = 0.0

    def offer(self, now: float, size: int) -> float | None:
        """The arrival time at the far end of a datagram of ``size`` bytes sent at ``now``, or None."""
        if self.loss and self.rng.random() < self.loss:
            self.dropped_loss += 1
            return None
        queue = self._queue
        while queue and queue[0][0] <= now:
            self._queued -= queue.popleft()[1]
        if self._queued + size > self.queue_bytes:
            self.dropped_queue += 1
            return None
        done = max(now, self._busy_until) + size * 8 / self.rate_bps
        self._busy_until = done
        queue.append((done, size))
        self._queued += size
        self.max_queued = max(self.max_queued, self._queued)
        arrival = done + self.one_way
        if self.wake_every:
            arrival = math.ceil(arrival / self.wake_every) * self.wake_every
        return arrival


@dataclass
class FlowResult:
    controller: str
    delivered: int
    started: float
    finished: float
    max_cwnd: int = 0

    @property
    def goodput_bps(self) -> float:
        return self.delivered * 8 / max(self.finished - self.started, 1e-9)


class Flow:
    """A client writing to its server on ``streams`` streams, as the daemon's serving path does."""

    def __init__(
        self, controller: str, size: int | None, streams: int, datagram_size: int, index: int, chatter: int = 0
    ) -> None:
        if len(_IDENTITY) < 2:
            _IDENTITY.extend(NodeIdentity.generate() for _ in range(2 - len(_IDENTITY)))
        client_config = quic_configuration(_IDENTITY[0], is_client=True, max_datagram_size=datagram_size)
        server_config = quic_configuration(_IDENTITY[1], is_client=False, max_datagram_size=datagram_size)
        client_config.congestion_control_algorithm = controller
        self.controller = controller
        self.client_addr = (f"10.0.1.{index + 1}", 4000)
        self.server_addr = (f"10.0.2.{index + 1}", 5000)
        self.client = KacheryQuicConnection(configuration=client_config)
        self.server = KacheryQuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.size = size
        self.streams = streams
        self.left: dict[int, int] = {}
        self.waiting: set[int] = set()
        self.delivered = 0
        self.started: float | None = None
        self.finished: float | None = None
        self.max_cwnd = 0
        # Before the bulk, ``chatter`` small messages one at a time, each sent when the last arrived (as a
        # daemon's session authenticates, joins channels and asks who has the file before a download).
        self.chatter = chatter
        self.start_after = 0.0  # the bulk starts no sooner than this (a flow that joins a busy link)
        self._chatter_stream: int | None = None
        self._chatter_seen = 0

    def ready_to_write(self) -> bool:
        """Whether the bulk may start: the handshake is done and the chatter exchanged."""
        if not (self.client._handshake_complete and self.server._handshake_complete):
            return False
        if self._chatter_stream is None:
            self._chatter_stream = self.client.get_next_available_stream_id()
        if self._chatter_seen * CHATTER != self.delivered:
            return False  # the last message is still on its way
        if self._chatter_seen >= self.chatter:
            return True
        self.client.send_stream_data(self._chatter_stream, bytes(CHATTER))
        self._chatter_seen += 1
        return False

    def start_writing(self, now: float) -> None:
        self.started = now
        self.delivered = 0
        per_stream = None if self.size is None else -(-self.size // self.streams)
        for _ in range(self.streams):
            stream_id = self.client.get_next_available_stream_id()
            self.left[stream_id] = -1 if per_stream is None else per_stream
            self.client.send_stream_data(stream_id, b"")
        self.write()

    def write(self) -> None:
        for stream_id, left in self.left.items():
            if left == 0:
                continue
            buffered = stream_send_buffered(self.client, stream_id)
            if stream_id in self.waiting:
                if buffered > LOW_WATER:
                    continue
                self.waiting.discard(stream_id)
            while buffered <= HIGH_WATER and left != 0:
                block = BLOCK if left < 0 else min(BLOCK, left)
                left = left if left < 0 else left - block
                self.client.send_stream_data(stream_id, bytes(block), end_stream=left == 0)
                buffered += block
            if left != 0:
                self.waiting.add(stream_id)
            self.left[stream_id] = left

    def read(self, now: float) -> None:
        while (event := self.server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self.delivered += len(event.data)
        if self.size is not None and self.finished is None and self.delivered >= self.size:
            self.finished = now
        self.max_cwnd = max(self.max_cwnd, self.client._loss.congestion_window)

    def result(self, now: float) -> FlowResult:
        return FlowResult(self.controller, self.delivered, self.started or 0.0, self.finished or now, self.max_cwnd)


class SimNet:
    """Flows sharing one bottleneck (forward: client to server; the reverse path carries the ACKs)."""

    def __init__(self, forward: Bottleneck, reverse: Bottleneck) -> None:
        self.now = 0.0
        self.forward = forward
        self.reverse = reverse
        self.flows: list[Flow] = []
        self._heap: list[tuple[float, int, QuicConnection, bytes, Any]] = []
        self._seq = 0
        self._idle_steps = 0
        self._routes: dict[int, tuple[QuicConnection, Bottleneck, Any]] = {}

    def add(self, flow: Flow) -> None:
        self.flows.append(flow)
        self._routes[id(flow.client)] = (flow.server, self.forward, flow.client_addr)
        self._routes[id(flow.server)] = (flow.client, self.reverse, flow.server_addr)
        flow.client.connect(flow.server_addr, now=self.now)
        self._send(flow.client)

    def _send(self, conn: QuicConnection) -> None:
        if not conn._network_paths:
            return  # a server before its client's first datagram
        dest, link, src = self._routes[id(conn)]
        for data, _ in conn.datagrams_to_send(now=self.now):
            arrival = link.offer(self.now, len(data))
            if arrival is not None:
                self._seq += 1
                heapq.heappush(self._heap, (arrival, self._seq, dest, data, src))

    def step(self, deadline: float) -> bool:
        """Advance to the next arrival or timer (at most ``deadline``); False when that is the deadline."""
        conns = [c for f in self.flows for c in (f.client, f.server)]
        timers = [t for t in (c.get_timer() for c in conns) if t is not None]
        at = min([*timers, self._heap[0][0] if self._heap else deadline, deadline])
        # A timer due now that did nothing (aioquic holds an ACK due exactly now behind its pacer) must
        # not stop the clock: real time always moves on.
        self.now = max(self.now + 1e-6 if self._idle_steps > 2 else self.now, at)
        before = self._seq
        while self._heap and self._heap[0][0] <= self.now:
            _, _, dest, data, src = heapq.heappop(self._heap)
            dest.receive_datagram(data, src, now=self.now)
        for conn in conns:
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(now=self.now)
        for flow in self.flows:
            if flow.started is None and self.now >= flow.start_after and flow.ready_to_write():
                flow.start_writing(self.now)
            flow.read(self.now)
            while flow.client.next_event() is not None:
                pass
            if flow.started is not None:
                flow.write()
            self._send(flow.client)
            self._send(flow.server)
        self._idle_steps = self._idle_steps + 1 if self._seq == before and self.now == at else 0
        return self.now < deadline

    def run(self, seconds: float, until_done: bool = True) -> None:
        deadline = self.now + seconds
        while self.step(deadline):
            if until_done and all(f.finished is not None for f in self.flows):
                return


def make_net(rate_bps: float, rtt: float, loss: float, queue_bytes: int | None = None, seed: int = 1) -> SimNet:
    """A path of ``rate_bps`` and ``rtt``; the queue holds one bandwidth-delay product unless told."""
    queue = queue_bytes if queue_bytes is not None else max(int(rate_bps / 8 * rtt), 64 * 1024)
    rng = random.Random(seed)
    forward = Bottleneck(rate_bps, rtt / 2, queue, loss, random.Random(rng.random()))
    reverse = Bottleneck(rate_bps, rtt / 2, queue, loss, random.Random(rng.random()))
    return SimNet(forward, reverse)


def run_transfer(
    controller: str,
    rtt: float,
    loss: float,
    size: int = 40_000_000,
    rate_bps: float = RATE_100M,
    streams: int = 4,
    datagram_size: int = 1350,
    seed: int = 1,
    max_seconds: float = 120.0,
) -> FlowResult:
    """One flow of ``size`` bytes alone on the path: its goodput from first byte written to last read."""
    net = make_net(rate_bps, rtt, loss, seed=seed)
    flow = Flow(controller, size, streams, datagram_size, 0)
    net.add(flow)
    net.run(max_seconds)
    return flow.result(net.now)


def run_shared(
    controllers: list[str],
    rtt: float,
    loss: float = 0.0,
    seconds: float = 20.0,
    rate_bps: float = RATE_100M,
    streams: int = 4,
    datagram_size: int = 1350,
    seed: int = 1,
    starts: list[float] | None = None,
) -> list[FlowResult]:
    """Flows without end sharing the path for ``seconds``; each one's goodput over the second half.
    ``starts``: when each flow starts writing (seconds; all at once unless told)."""
    net = make_net(rate_bps, rtt, loss, seed=seed)
    flows = [Flow(name, None, streams, datagram_size, i) for i, name in enumerate(controllers)]
    for flow, start in zip(flows, starts or [0.0] * len(flows), strict=True):
        flow.start_after = start
        net.add(flow)
    net.run(seconds / 2, until_done=False)
    half = [(flow.delivered, net.now) for flow in flows]
    net.run(seconds / 2, until_done=False)
    return [
        FlowResult(flow.controller, flow.delivered - d0, t0, net.now, flow.max_cwnd)
        for flow, (d0, t0) in zip(flows, half, strict=True)
    ]
