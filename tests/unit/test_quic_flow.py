"""Receive windows (quic/flow.py): they slide on delivered data, auto-tune up to a bound, and a peer that
leaves a gap cannot make the receiver buffer more than the window (stock aioquic doubles without bound).

Two connections in memory, datagrams handed over after a simulated one-way delay; no sockets, no sleeps.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicDeliveryState

from kachery_p2p.quic.flow import MAX_CONNECTION_WINDOW, MAX_STREAM_WINDOW, KacheryQuicConnection
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.quic.settings import MAX_DATA, MAX_STREAM_DATA, quic_configuration

CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)


class Pair:
    """A client and a KacheryQuicConnection server, ``one_way`` seconds apart, on a simulated clock."""

    def __init__(
        self, client_cls: type[QuicConnection], one_way: float = 0.02, size: int = 1350, server_cls: Any = None
    ) -> None:
        self.now = 0.0
        self.one_way = one_way
        # reno: these tests are about the receive windows, and the client may be plain aioquic (the
        # model-based controller paces through KacheryQuicConnection's pacer only)
        config = quic_configuration(
            NodeIdentity.generate(), is_client=True, max_datagram_size=size, congestion_control="reno"
        )
        self.client = client_cls(configuration=config)
        server_config = quic_configuration(
            NodeIdentity.generate(), is_client=False, max_datagram_size=size, congestion_control="reno"
        )
        self.server = (server_cls or KacheryQuicConnection)(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.queue: list[tuple[float, int, QuicConnection, bytes, Any]] = []
        self.seq = 0
        self.received = 0
        self.client.connect(SERVER_ADDR, now=self.now)

    def _flush(self) -> None:
        for conn, dest, src in ((self.client, self.server, CLIENT_ADDR), (self.server, self.client, SERVER_ADDR)):
            if not conn._network_paths:
                continue  # the server before the client's first datagram
            for data, _ in conn.datagrams_to_send(now=self.now):
                self.seq += 1
                heapq.heappush(self.queue, (self.now + self.one_way, self.seq, dest, data, src))
        while (event := self.server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self.received += len(event.data)
        while self.client.next_event() is not None:
            pass

    def run(self, until: Callable[[], bool], seconds: float) -> None:
        deadline = self.now + seconds
        self._flush()
        while not until() and self.now < deadline:
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            next_at = min([*timers, self.queue[0][0] if self.queue else deadline])
            self.now = max(self.now, min(next_at, deadline))
            while self.queue and self.queue[0][0] <= self.now:
                _, _, dest, data, src = heapq.heappop(self.queue)
                dest.receive_datagram(data, src, now=self.now)
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(now=self.now)
            self._flush()


def test_windows_grow_while_data_is_drained_fast_and_stay_bounded() -> None:
    # 80 ms RTT, no rate limit: the windows are the only limit (big datagrams: a quicker test).
    pair = Pair(QuicConnection, one_way=0.04, size=16000)
    pair.run(lambda: pair.server._handshake_complete, 5)
    stream_id = pair.client.get_next_available_stream_id()
    total = 24 * 1024 * 1024
    pair.client.send_stream_data(stream_id, bytes(total), end_stream=True)
    pair.run(lambda: stream_id in pair.server._streams, 5)
    stream = pair.server._streams[stream_id]
    pair.run(lambda: pair.received >= total, 30)
    assert pair.received == total
    # The stream window grew from its initial 2 MiB to the 8 MiB bound, the connection's from 4 to 16 MiB.
    assert stream._kp_window[0] == MAX_STREAM_WINDOW  # type: ignore[attr-defined]
    assert stream.max_stream_data_local <= total + MAX_STREAM_WINDOW
    assert pair.server._fc_window == MAX_CONNECTION_WINDOW
    assert pair.server._local_max_data.value <= total + MAX_CONNECTION_WINDOW


class GapLeavingClient(QuicConnection):
    """A hostile sender: the first bytes of every stream are 'lost' and never sent again."""

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        sender = self._streams[stream_id].sender
        original = sender.on_data_delivery

        def on_delivery(delivery: QuicDeliveryState, start: int, stop: int, fin: bool) -> None:
            if delivery == QuicDeliveryState.LOST and start == 0:
                return  # never retransmit the head of the stream
            original(delivery, start, stop, fin)

        sender.on_data_delivery = on_delivery  # type: ignore[method-assign]
        sender._pending.subtract(0, 1000)  # and never send it in the first place


def test_a_peer_leaving_a_gap_cannot_grow_the_receive_buffer() -> None:
    pair = Pair(GapLeavingClient)
    pair.run(lambda: pair.server._handshake_complete, 5)
    streams = []
    for _ in range(4):
        streams.append(pair.client.get_next_available_stream_id())
        pair.client.send_stream_data(streams[-1], bytes(64 * 1024 * 1024))
    pair.run(lambda: False, 2)  # stock aioquic: each window doubles every round trip, 64 MiB per stream
    assert pair.received == 0  # nothing in order: everything is buffered, out of order
    buffered = sum(len(pair.server._streams[s].receiver._buffer) for s in streams)
    assert buffered <= MAX_DATA  # the connection's initial window: it only slides on delivered data
    for stream_id in streams:
        assert pair.server._streams[stream_id].max_stream_data_local == MAX_STREAM_DATA
    assert pair.server._local_max_data.value == MAX_DATA
