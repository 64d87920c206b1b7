"""The aioquic fast path (quic/fastpath.py): a connection taking it talks to stock aioquic byte-exact,
both ways, through a link that loses, reorders and duplicates datagrams; the kill switch turns it off.

Two connections in memory on a simulated clock (no sockets, no sleeps): if the fast path sent a wrong
packet, dropped state, or mis-handled a loss, the transfer would arrive corrupted or stall, and the
deadline (simulated seconds) would fail the test.
"""

from __future__ import annotations

import heapq
import os
import random
import types
from typing import Any

import pytest
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoError
from aioquic.quic.rangeset import RangeSet
from aioquic.tls import Epoch

from kachery_p2p.quic import fastpath
from kachery_p2p.quic.fastpath import ENV_SWITCH, FastPathMixin
from kachery_p2p.quic.fastpath_packets import FastPacketBuilder, fast_on_ack_received
from kachery_p2p.quic.flow import KacheryQuicConnection
from kachery_p2p.quic.identity import NodeIdentity
from kachery_p2p.quic.settings import quic_configuration

CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)


class LossyPair:
    """A client and a server on a simulated clock; each datagram is lost with ``loss``, delayed by
    ``one_way`` plus up to ``jitter`` (which reorders), and duplicated with ``duplicate``."""

    def __init__(
        self,
        client_cls: type[QuicConnection],
        server_cls: type[QuicConnection],
        *,
        client_cc: str = "reno",
        server_cc: str = "reno",
        loss: float = 0.03,
        jitter: float = 0.004,
        duplicate: float = 0.01,
        seed: int = 7,
    ) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.loss, self.jitter, self.duplicate = loss, jitter, duplicate
        self.one_way = 0.005
        config = quic_configuration(
            NodeIdentity.generate(), is_client=True, max_datagram_size=1472, congestion_control=client_cc
        )
        self.server_config = quic_configuration(
            NodeIdentity.generate(), is_client=False, max_datagram_size=1472, congestion_control=server_cc
        )
        self.server_cls = server_cls
        self.client = client_cls(configuration=config)
        self.server: QuicConnection | None = None
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.seq = 0
        self.received: dict[str, dict[int, bytearray]] = {"client": {}, "server": {}}
        self.finished: dict[str, set[int]] = {"client": set(), "server": set()}
        self.client.connect(SERVER_ADDR, now=self.now)

    def _emit(self, conn: QuicConnection, dest: str) -> None:
        for data, _addr in conn.datagrams_to_send(now=self.now):
            if self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                self.seq += 1
                at = self.now + self.one_way + self.rng.random() * self.jitter
                heapq.heappush(self.queue, (at, self.seq, dest, data))

    def _drain(self, conn: QuicConnection, side: str) -> None:
        for event in iter(conn.next_event, None):
            if isinstance(event, events.StreamDataReceived):
                self.received[side].setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.end_stream:
                    self.finished[side].add(event.stream_id)

    def step(self) -> None:
        conns = [c for c in (self.client, self.server) if c is not None]
        times = [t for t in (c.get_timer() for c in conns) if t is not None]
        if self.queue:
            times.append(self.queue[0][0])
        # a timer already due that brought nothing (e.g. an ACK the pacer holds): time moves on, as in a
        # real event loop
        self.now = max(self.now + 0.0001, min(times))
        while self.queue and self.queue[0][0] <= self.now:
            _at, _seq, dest, data = heapq.heappop(self.queue)
            if dest == "server":
                if self.server is None:
                    self.server = self.server_cls(
                        configuration=self.server_config,
                        original_destination_connection_id=self.client.original_destination_connection_id,
                    )
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            else:
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
        for conn in conns:
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(now=self.now)
        self._drain(self.client, "client")
        if self.server is not None:
            self._drain(self.server, "server")
        self._emit(self.client, "server")
        if self.server is not None:
            self._emit(self.server, "client")

    def run_until(self, done: Any, deadline: float) -> None:
        while not done():
            assert self.now < deadline, f"stalled at t={self.now:.3f}"
            self.step()

    def connected(self) -> bool:
        return self.server is not None and self.client._handshake_confirmed and self.server._handshake_complete


def _transfer_both_ways(pair: LossyPair, size: int) -> None:
    pair.run_until(pair.connected, deadline=5.0)
    assert pair.server is not None
    up = random.Random(1).randbytes(size)
    down = random.Random(2).randbytes(size)
    up_id = pair.client.get_next_available_stream_id()
    down_id = pair.server.get_next_available_stream_id()
    chunk = 64 * 1024
    for offset in range(0, size, chunk):  # written in pieces, as the daemon does
        pair.client.send_stream_data(up_id, up[offset : offset + chunk], end_stream=offset + chunk >= size)
        pair.server.send_stream_data(down_id, down[offset : offset + chunk], end_stream=offset + chunk >= size)
    pair.run_until(
        lambda: up_id in pair.finished["server"] and down_id in pair.finished["client"], deadline=pair.now + 120.0
    )
    assert bytes(pair.received["server"][up_id]) == up
    assert bytes(pair.received["client"][down_id]) == down
    server = pair.server

    def all_acked() -> bool:  # each sender saw every byte and the FIN acknowledged
        up_stream = pair.client._streams.get(up_id)
        down_stream = server._streams.get(down_id)
        return (up_stream is None or up_stream.sender.is_finished) and (
            down_stream is None or down_stream.sender.is_finished
        )

    pair.run_until(all_acked, deadline=pair.now + 30.0)


class _Counted(KacheryQuicConnection):
    """Counts the packets the fast path received and the builders it made."""

    fast_received = 0
    fast_built = 0

    def _fp_receive_one_rtt(self, *args: Any, **kwargs: Any) -> None:
        type(self).fast_received += 1
        super()._fp_receive_one_rtt(*args, **kwargs)

    def _fp_flush_builder(self, builder: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(builder, FastPacketBuilder):
            type(self).fast_built += 1
        return super()._fp_flush_builder(builder, *args, **kwargs)


@pytest.fixture(autouse=True)
def _reset_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    _Counted.fast_received = _Counted.fast_built = 0


def test_installed_aioquic_is_the_one_the_fast_path_was_written_for() -> None:
    # If this fails, aioquic changed under the pin: the fast path is off (safe), re-check it against
    # the new aioquic and update EXPECTED_SOURCES.
    assert fastpath.compatible()
    assert fastpath.enabled()


@pytest.mark.parametrize("fast_side", ["client", "server"])
@pytest.mark.parametrize("cc", ["reno", "kachery-bbr"])
def test_fast_path_with_stock_peer_is_byte_exact_under_loss_and_reordering(fast_side: str, cc: str) -> None:
    if fast_side == "client":
        pair = LossyPair(_Counted, QuicConnection, client_cc=cc)
    else:
        pair = LossyPair(QuicConnection, _Counted, server_cc=cc)
    _transfer_both_ways(pair, 1_500_000)
    assert _Counted.fast_received > 500  # the fast side received through the fast path...
    assert _Counted.fast_built > 50  # ...and sent through it


def test_fast_path_on_both_sides_with_heavy_loss() -> None:
    pair = LossyPair(_Counted, _Counted, client_cc="kachery-bbr", loss=0.08, jitter=0.01, duplicate=0.05, seed=3)
    _transfer_both_ways(pair, 800_000)
    assert _Counted.fast_received > 500


def test_kill_switch_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert not fastpath.enabled()
    pair = LossyPair(_Counted, _Counted, loss=0.02)
    _transfer_both_ways(pair, 300_000)
    assert _Counted.fast_received == 0 and _Counted.fast_built == 0
    assert pair.client._fp_on is False  # type: ignore[attr-defined]
    assert type(pair.client._loss).on_ack_received is not None and "on_ack_received" not in vars(pair.client._loss)


def test_an_aioquic_that_does_not_match_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fastpath.EXPECTED_SOURCES, "QuicConnection.receive_datagram", "0" * 16)
    assert not fastpath._check_compatible()
    monkeypatch.setattr(fastpath, "_COMPATIBLE", False)
    assert not fastpath.enabled()
    conn = KacheryQuicConnection(
        configuration=quic_configuration(NodeIdentity.generate(), is_client=True, congestion_control="reno")
    )
    assert conn._fp_on is False  # type: ignore[attr-defined]


def test_switch_values() -> None:
    for value, expected in (("0", False), ("off", False), ("1", True), ("", True)):
        os.environ[ENV_SWITCH] = value
        assert fastpath.enabled() is expected
    del os.environ[ENV_SWITCH]
    assert issubclass(KacheryQuicConnection, FastPathMixin)


def test_packet_protection_is_aioquic_s_byte_for_byte() -> None:
    from aioquic.quic.crypto import CryptoPair

    from kachery_p2p.quic.fastpath_crypto import decrypt_one_rtt, encrypt_one_rtt

    client, server = CryptoPair(), CryptoPair()
    client.setup_initial(b"\x01" * 8, is_client=True, version=1)
    server.setup_initial(b"\x01" * 8, is_client=False, version=1)
    rng = random.Random(5)
    for packet_number in (0, 1, 255, 256, 65535, 65536, 1_000_003):
        header = bytes([0x41 | (client.key_phase << 2)]) + b"\xaa" * 8 + (packet_number & 0xFFFF).to_bytes(2, "big")
        payload = rng.randbytes(rng.choice((4, 20, 1200)))
        fast = encrypt_one_rtt(client, header, payload, packet_number)
        assert fast == client.encrypt_packet(header, payload, packet_number)
        assert fast is not None
        expected = max(0, packet_number - 3)
        assert decrypt_one_rtt(server, fast, 9, expected) == server.decrypt_packet(fast, 9, expected)
        tampered = fast[:-1] + bytes([fast[-1] ^ 1])
        with pytest.raises(CryptoError):
            decrypt_one_rtt(server, tampered, 9, expected)
    other_phase = bytes([0x45]) + b"\xaa" * 8 + b"\x00\x07"
    assert decrypt_one_rtt(server, encrypt_one_rtt(client, other_phase, b"x" * 40, 7) or b"", 9, 7) is None
    client.update_key()
    assert encrypt_one_rtt(client, header, payload, 8) is None  # a key update asked for: aioquic's code


@pytest.mark.parametrize("updater", ["fast", "stock"])
def test_key_updates_during_a_transfer(updater: str) -> None:
    pair = LossyPair(_Counted, QuicConnection, loss=0.02)
    pair.run_until(pair.connected, deadline=5.0)
    assert pair.server is not None
    data = random.Random(3).randbytes(600_000)
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, data, end_stream=True)
    conn = pair.client if updater == "fast" else pair.server
    for _ in range(3):  # three key updates while data flows (RFC 9001 section 6)
        start = pair.now
        pair.run_until(lambda start=start: pair.now > start + 0.05, deadline=start + 1.0)  # type: ignore[misc]
        conn.request_key_update()
    pair.run_until(lambda: stream_id in pair.finished["server"], deadline=pair.now + 60.0)
    assert bytes(pair.received["server"][stream_id]) == data
    assert pair.client._cryptos[Epoch.ONE_RTT].recv.key_phase == 1  # three updates: phase 0 -> 1 -> 0 -> 1
    assert _Counted.fast_received > 100


def test_an_ack_of_many_wide_ranges_costs_no_more_lookups_than_packets_in_flight() -> None:
    # A hostile peer's ACK frame: 100 disjoint ranges, each almost as wide as what is in flight, none of
    # them covering a packet we sent. Looking up every number would be 100 x 1,000 dictionary look-ups per
    # ACK (aioquic bisects instead); the fast walk falls back to bisection once it has done 1,000.
    class CountingDict(dict):  # type: ignore[type-arg]
        pops = 0

        def pop(self, *args: object) -> object:
            CountingDict.pops += 1
            return super().pop(*args)

    sent = CountingDict((n, object()) for n in range(1_000))
    space = types.SimpleNamespace(sent_packets=sent, largest_acked_packet=-1)
    recovery = types.SimpleNamespace(_cc=None)
    ranges = RangeSet()
    for i in range(100):
        start = 10_000 + i * 2_000
        ranges.add(start, start + 999)
    fast_on_ack_received(recovery, ack_rangeset=ranges, ack_delay=0.0, now=1.0, space=space)  # type: ignore[arg-type]
    assert CountingDict.pops <= len(sent)
    assert len(sent) == 1_000  # nothing acknowledged


def test_flow_control_limits_are_raised_by_a_fast_receiver_past_the_initial_windows() -> None:
    # 5 MB on one stream is past the initial 2 MiB stream and 4 MiB connection windows: the stock sender
    # stalls unless the fast side's packets carry MAX_STREAM_DATA / MAX_DATA (asked once per call there).
    pair = LossyPair(QuicConnection, _Counted, loss=0.01, jitter=0.002, duplicate=0.0)
    pair.run_until(pair.connected, deadline=5.0)
    data = random.Random(4).randbytes(5_000_000)
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, data, end_stream=True)
    pair.run_until(lambda: stream_id in pair.finished["server"], deadline=pair.now + 60.0)
    assert bytes(pair.received["server"][stream_id]) == data
    assert _Counted.fast_built > 50


def test_one_builder_serves_every_call_and_starts_over_clean() -> None:
    # The connection's builder is reused (FastPacketBuilder.reuse): a builder left mid-packet (an exception
    # escaped) then reused must build exactly what a new builder builds.
    made: list[FastPacketBuilder] = []

    class Recording(_Counted):
        def _fp_flush_builder(self, builder: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(builder, FastPacketBuilder) and all(b is not builder for b in made):
                made.append(builder)
            return super()._fp_flush_builder(builder, *args, **kwargs)

    pair = LossyPair(Recording, QuicConnection, loss=0.0, jitter=0.0, duplicate=0.0)
    _transfer_both_ways(pair, 300_000)
    assert Recording.fast_built > 50 and len(made) == 1

    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicFrameType, QuicPacketType

    def build(builder: FastPacketBuilder) -> tuple[list[bytes], list[int]]:
        crypto = CryptoPair()
        crypto.setup_initial(b"\x01" * 8, is_client=True, version=1)
        builder.max_flight_bytes = builder.max_total_bytes = 1400  # as datagrams_to_send sets them
        builder.start_packet(QuicPacketType.ONE_RTT, crypto)
        builder.start_frame(QuicFrameType.STREAM_BASE, capacity=1200).push_bytes(b"y" * 1200)
        datagrams, packets = builder.flush()
        return datagrams, [packet.packet_number for packet in packets]

    def fresh() -> FastPacketBuilder:
        return FastPacketBuilder(
            host_cid=b"h" * 8, peer_cid=b"p" * 8, version=1, is_client=True, max_datagram_size=1472, packet_number=9
        )

    used = fresh()
    used.max_flight_bytes = used.max_total_bytes = 2000
    crypto = CryptoPair()
    crypto.setup_initial(b"\x02" * 8, is_client=True, version=1)
    used.start_packet(QuicPacketType.ONE_RTT, crypto)
    used.start_frame(QuicFrameType.STREAM_BASE, capacity=1000).push_bytes(b"z" * 1000)
    used.start_packet(QuicPacketType.ONE_RTT, crypto)  # the first packet is a datagram: bytes counted
    used.start_frame(QuicFrameType.STREAM_BASE, capacity=40).push_bytes(b"z" * 40)  # left mid-packet
    used.reuse(b"h" * 8, b"p" * 8, 9, False)
    assert build(used) == build(fresh())


@pytest.mark.parametrize(
    ("stream_id", "offset", "size", "fin", "max_offset_left", "max_flight", "phase"),
    [
        (0, 0, 5000, False, 10**9, None, 0),  # first frame of a stream: no offset field
        (4, 1234, 5000, False, 10**9, None, 0),  # 2-byte offset
        (100, 70_000, 300, True, 10**9, None, 0),  # 2-byte stream id, 4-byte offset, the FIN fits
        (8, 2**31, 5000, False, 10**9, None, 0),  # 8-byte offset
        (0, 0, 5000, False, 700, None, 0),  # flow control cuts the frame
        (0, 0, 5000, True, 10**9, 600, 0),  # the congestion window cuts it (the FIN does not fit)
        (0, 0, 5000, False, 0, None, 0),  # flow control holds it: nothing
        (0, 0, 5000, False, 10**9, 30, 0),  # no room for any data: nothing
        (4, 1234, 5000, False, 10**9, None, 1),  # after a key update
    ],
)
def test_a_lone_stream_packet_is_what_the_general_builder_builds(
    stream_id: int, offset: int, size: int, fin: bool, max_offset_left: int, max_flight: int | None, phase: int
) -> None:
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicPacketType
    from aioquic.quic.stream import QuicStream

    from kachery_p2p.quic.fastpath_packets import write_stream_frame
    from kachery_p2p.quic.fastpath_stream import stream_packet

    def setup() -> tuple[FastPacketBuilder, CryptoPair, QuicStream]:
        crypto = CryptoPair()
        crypto.setup_initial(b"\x03" * 8, is_client=True, version=1)
        if phase:
            crypto.update_key()
            crypto.encrypt_packet(b"\x41" + b"p" * 8 + b"\x00\x00", b"\x01" * 20, 0)  # the update happens
            assert crypto.key_phase == 1
        builder = FastPacketBuilder(
            host_cid=b"h" * 8, peer_cid=b"p" * 8, version=1, is_client=True, max_datagram_size=1472, packet_number=7001
        )
        builder.max_flight_bytes = max_flight
        stream = QuicStream(stream_id=stream_id, max_stream_data_remote=10**12)
        sender = stream.sender
        sender._buffer_start = sender._buffer_stop = sender.highest_offset = offset  # as if acknowledged so far
        sender.write(random.Random(offset).randbytes(size), end_stream=fin)
        return builder, crypto, stream

    fast_builder, fast_crypto, fast_stream = setup()
    used = stream_packet(fast_builder, fast_crypto, fast_stream, offset + max_offset_left)
    general, general_crypto, general_stream = setup()
    general.start_packet(QuicPacketType.ONE_RTT, general_crypto)
    general_used = write_stream_frame(general, general_stream, offset + max_offset_left)
    assert used == general_used
    fast_datagrams, fast_packets = fast_builder.flush()
    datagrams, packets = general.flush()
    assert fast_datagrams == datagrams
    assert [(p.packet_number, p.sent_bytes, p.in_flight, p.is_ack_eliciting) for p in fast_packets] == [
        (p.packet_number, p.sent_bytes, p.in_flight, p.is_ack_eliciting) for p in packets
    ]
    assert [p.delivery_handlers[0][1][1:] for p in fast_packets] == [p.delivery_handlers[0][1][1:] for p in packets]
    assert fast_builder.packet_number == general.packet_number
    for attr in ("_flight_bytes", "_total_bytes", "_buffer_capacity", "_flight_capacity"):
        assert getattr(fast_builder, attr) == getattr(general, attr), attr
    fast_sender, sender = fast_stream.sender, general_stream.sender
    assert list(fast_sender._pending) == list(sender._pending)
    assert (fast_sender.highest_offset, fast_sender._pending_eof) == (sender.highest_offset, sender._pending_eof)
