"""Packets and recovery for the fast path (``fastpath.py``): a cheaper ``QuicPacketBuilder`` for 1-RTT
packets, a cheaper ACK walk for the sender, the idle timeout without a call chain.

aioquic's builder serves every packet type; most of its per-packet checks are about long-header
packets (INITIAL padding, coalescing, length fields). ``FastPacketBuilder`` handles 1-RTT packets
with the same rules in fewer steps and hands a lone 1-RTT packet over as its datagram without the
two copies through the builder's buffer; other packet types go to aioquic's code. The bytes on the
wire are the same as aioquic's.

``fast_on_ack_received`` replaces ``QuicPacketRecovery.on_ack_received`` on one recovery object:
aioquic copies the list of all packets in flight on every ACK to bisect it; this visits the
acknowledged packet numbers directly while their count, over all the frame's ranges, stays within the
number of packets in flight (and bisects as aioquic does otherwise, so a peer's huge or numerous ranges
cost no more than with aioquic).

``fastpath.py`` checks at import that the aioquic code these replace is the code they were written
against (``compatible()``), and uses them only then.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from aioquic.buffer import Buffer, size_uint_var
from aioquic.quic.congestion.base import K_GRANULARITY
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    NON_ACK_ELICITING_FRAME_TYPES,
    NON_IN_FLIGHT_FRAME_TYPES,
    PACKET_FIXED_BIT,
    PACKET_NUMBER_MAX_SIZE,
    QuicFrameType,
    QuicPacketType,
)
from aioquic.quic.packet_builder import (
    PACKET_NUMBER_SEND_SIZE,
    QuicDeliveryHandler,
    QuicDeliveryState,
    QuicPacketBuilder,
    QuicPacketBuilderStop,
    QuicSentPacket,
)
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace
from aioquic.quic.stream import QuicStream, QuicStreamSender
from aioquic.tls import Epoch

from .fastpath_crypto import encrypt_one_rtt

_ONE_RTT = QuicPacketType.ONE_RTT
_ONE_RTT_EPOCH = Epoch.ONE_RTT
_ACKED = QuicDeliveryState.ACKED
# Plain ints: membership of an int in a set of IntEnum members is as fast, this spells the intent.
_NON_IN_FLIGHT = frozenset(int(t) for t in NON_IN_FLIGHT_FRAME_TYPES)
_NON_ACK_ELICITING = frozenset(int(t) for t in NON_ACK_ELICITING_FRAME_TYPES)
_CRYPTO = int(QuicFrameType.CRYPTO)
_PATH_FRAMES = frozenset((int(QuicFrameType.PATH_CHALLENGE), int(QuicFrameType.PATH_RESPONSE)))
MIN_FIRST_FRAME = PACKET_NUMBER_MAX_SIZE - PACKET_NUMBER_SEND_SIZE
_PN_LENGTH_BITS = PACKET_NUMBER_SEND_SIZE - 1
_EMPTY: Sequence[Any] = ()
_STREAM_WITH_LENGTH = int(QuicFrameType.STREAM_BASE) | 2


class FastPacketBuilder(QuicPacketBuilder):
    """``QuicPacketBuilder`` with cheaper 1-RTT packets (same bytes on the wire)."""

    def reuse(self, host_cid: bytes, peer_cid: bytes, packet_number: int, spin_bit: bool) -> None:
        """Start over as ``QuicPacketBuilder.__init__`` would with these values (the others are the
        connection's constants), to serve the connection's next ``datagrams_to_send``."""
        self.max_flight_bytes = None
        self.max_total_bytes = None
        self.quic_logger_frames = None
        self._host_cid = host_cid
        self._peer_cid = peer_cid
        self._spin_bit = spin_bit
        self._datagrams = []
        self._datagram_flight_bytes = 0
        self._datagram_init = True
        self._datagram_needs_padding = False
        self._packets = []
        self._flight_bytes = 0
        self._total_bytes = 0
        self._header_size = 0
        self._packet = None
        self._packet_crypto = None
        self._packet_number = packet_number
        self._packet_start = 0
        self._packet_type = None
        buf = self._buffer
        buf.seek(0)
        self._buffer_capacity = self._flight_capacity = buf.capacity

    def start_frame(
        self,
        frame_type: int,
        capacity: int = 1,
        handler: QuicDeliveryHandler | None = None,
        handler_args: Sequence[Any] = _EMPTY,
    ) -> Buffer:
        buf = self._buffer
        tell = buf.tell()
        packet = self._packet
        assert packet is not None and self._packet_crypto is not None
        if tell - self._packet_start <= self._header_size and capacity < MIN_FIRST_FRAME:
            capacity = MIN_FIRST_FRAME  # room for the header protection sample (RFC 9001 5.4.2)
        room = tell + self._packet_crypto.aead_tag_size + capacity
        in_flight = frame_type not in _NON_IN_FLIGHT
        if room > self._buffer_capacity or (in_flight and room > self._flight_capacity):
            raise QuicPacketBuilderStop
        buf.push_uint_var(frame_type)
        if frame_type not in _NON_ACK_ELICITING:
            packet.is_ack_eliciting = True
        if in_flight:
            packet.in_flight = True
        if frame_type == _CRYPTO:
            packet.is_crypto_packet = True
        if frame_type in _PATH_FRAMES:
            self._datagram_needs_padding = True
        if handler is not None:
            packet.delivery_handlers.append((handler, handler_args))
        return buf

    def start_packet(self, packet_type: QuicPacketType, crypto: Any) -> None:
        if packet_type is not _ONE_RTT:
            super().start_packet(packet_type, crypto)
            return
        buf = self._buffer
        if self._packet is not None:
            self._end_packet()
        packet_start = buf.tell()
        if self._buffer_capacity - packet_start < 128:
            self._flush_current_datagram()
            packet_start = 0
        if self._datagram_needs_padding and self._flight_capacity < self._buffer_capacity:
            self._flush_current_datagram()
            packet_start = 0
        if self._datagram_init:
            if self.max_total_bytes is not None:
                remaining_total_bytes = self.max_total_bytes - self._total_bytes
                if remaining_total_bytes < self._buffer_capacity:
                    self._buffer_capacity = remaining_total_bytes
            self._flight_capacity = self._buffer_capacity
            if self.max_flight_bytes is not None:
                remaining_flight_bytes = self.max_flight_bytes - self._flight_bytes
                if remaining_flight_bytes < self._flight_capacity:
                    self._flight_capacity = remaining_flight_bytes
            self._datagram_flight_bytes = 0
            self._datagram_init = False
            self._datagram_needs_padding = False
        header_size = 3 + len(self._peer_cid)
        if packet_start + header_size >= self._buffer_capacity:
            raise QuicPacketBuilderStop
        self._header_size = header_size
        packet = QuicSentPacket(_ONE_RTT_EPOCH, False, False, False, self._packet_number, packet_type)
        self._packet = packet
        self._packet_crypto = crypto
        self._packet_start = packet_start
        self._packet_type = packet_type
        self.quic_logger_frames = packet.quic_logger_frames
        buf.seek(packet_start + header_size)

    def _end_packet(self) -> None:
        if self._packet_type is not _ONE_RTT or self._quic_logger is not None:
            super()._end_packet()
            return
        buf = self._buffer
        packet = self._packet
        crypto = self._packet_crypto
        assert packet is not None and crypto is not None
        start = self._packet_start
        header_size = self._header_size
        packet_size = buf.tell() - start
        if packet_size > header_size:
            padding_size = MIN_FIRST_FRAME + header_size - packet_size
            if self._datagram_needs_padding:
                # a 1-RTT packet pads inside itself (PATH_CHALLENGE / PATH_RESPONSE datagrams)
                remaining_flight_space = self._flight_capacity - buf.tell() - crypto.aead_tag_size
                if remaining_flight_space > padding_size:
                    padding_size = remaining_flight_space
                self._datagram_needs_padding = False
            if padding_size > 0:
                buf.push_bytes(bytes(padding_size))
                packet_size += padding_size
                packet.in_flight = True
            packet_number = self._packet_number
            buf.seek(start)
            buf.push_uint8(PACKET_FIXED_BIT | (self._spin_bit << 5) | (crypto.key_phase << 2) | _PN_LENGTH_BITS)
            buf.push_bytes(self._peer_cid)
            buf.push_uint16(packet_number & 0xFFFF)
            plain = buf.data_slice(start, start + packet_size)
            plain_header = plain[:header_size]
            plain_payload = plain[header_size:packet_size]
            encrypted = encrypt_one_rtt(crypto, plain_header, plain_payload, packet_number)
            if encrypted is None:
                encrypted = crypto.encrypt_packet(plain_header, plain_payload, packet_number)
            sent_bytes = len(encrypted)
            packet.sent_bytes = sent_bytes
            self._packets.append(packet)
            if packet.in_flight:
                self._datagram_flight_bytes += sent_bytes
            if start == 0:
                # the packet is the whole datagram: hand it over without copying it through the buffer
                self._datagrams.append(encrypted)
                self._flight_bytes += self._datagram_flight_bytes
                self._total_bytes += sent_bytes
                self._datagram_init = True
                buf.seek(0)
            else:
                buf.seek(start)
                buf.push_bytes(encrypted)
                self._flush_current_datagram()  # short header packets cannot be coalesced
            self._packet_number = packet_number + 1
        else:
            buf.seek(start)  # nothing was written: cancel the packet
        self._packet = None
        self.quic_logger_frames = None


def write_stream_frame(builder: FastPacketBuilder, stream: QuicStream, max_offset: int) -> int | None:
    """``QuicConnection._write_stream_frame`` with ``QuicStreamSender.get_frame`` inline, for a stream
    with data pending: the same frame, without the frame object and property calls. None: not that
    case (a FIN alone, a reset stream), call aioquic's."""
    sender = stream.sender
    pending = sender._pending
    if sender._reset_error_code is not None or not len(pending):
        return None
    stream_id = stream.stream_id
    assert stream_id is not None and builder._packet_crypto is not None
    r = pending[0]
    start = r.start
    frame_overhead = 3 + size_uint_var(stream_id) + (size_uint_var(start) if start else 0)
    buf = builder._buffer
    max_size = builder._flight_capacity - buf.tell() - builder._packet_crypto.aead_tag_size - frame_overhead
    if max_size < 0:
        return 0
    stop = start + max_size
    if r.stop < stop:
        stop = r.stop
    if stop > max_offset:
        stop = max_offset
    if stop <= start:
        return 0
    buffer_start = sender._buffer_start
    data = bytes(sender._buffer[start - buffer_start : stop - buffer_start])
    pending.subtract(start, stop)
    previous_send_highest = sender.highest_offset
    if stop > previous_send_highest:
        sender.highest_offset = stop
    fin = sender._buffer_fin == stop
    if fin:
        sender._pending_eof = False
    frame_type = _STREAM_WITH_LENGTH | (4 if start else 0) | (1 if fin else 0)
    buf = builder.start_frame(frame_type, frame_overhead, stream_data_delivery, (sender, start, stop, fin))
    buf.push_uint_var(stream_id)
    if start:
        buf.push_uint_var(start)
    buf.push_uint16(len(data) | 0x4000)
    buf.push_bytes(data)
    return sender.highest_offset - previous_send_highest


def stream_data_delivery(
    delivery: QuicDeliveryState, sender: QuicStreamSender, start: int, stop: int, fin: bool
) -> None:
    """``sender.on_data_delivery``, without the acknowledged-ranges walk when the frame acknowledged is
    the oldest data still buffered (the common case: ACKs in order): the buffer just moves on."""
    if (
        delivery is _ACKED
        and not fin
        and stop > start
        and start == sender._buffer_start
        and sender._reset_error_code is None
        and not len(sender._acked)
    ):
        sender._buffer_start = stop
        del sender._buffer[: stop - start]
        if sender._buffer_start == sender._buffer_fin and sender._acked_fin:
            sender.is_finished = True
        return
    sender.on_data_delivery(delivery, start, stop, fin)


def idle_timeout(conn: QuicConnection) -> float:
    """``QuicConnection._idle_timeout`` with ``QuicPacketRecovery.get_probe_timeout`` inline."""
    timeout = conn._configuration.idle_timeout
    remote = conn._remote_max_idle_timeout
    if remote is not None and remote < timeout:
        timeout = remote
    loss = conn._loss
    if not loss._rtt_initialized:
        pto = 2 * loss._rtt_initial
    else:
        variance = 4 * loss._rtt_variance
        pto = loss._rtt_smoothed + (variance if variance > K_GRANULARITY else K_GRANULARITY) + loss.max_ack_delay
    return timeout if timeout > 3 * pto else 3 * pto


def fast_on_ack_received(
    recovery: QuicPacketRecovery, *, ack_rangeset: RangeSet, ack_delay: float, now: float, space: QuicPacketSpace
) -> None:
    """``QuicPacketRecovery.on_ack_received`` without copying the packets in flight on every ACK."""
    sent_packets = space.sent_packets
    largest_acked = ack_rangeset.bounds().stop - 1
    largest_newly_acked = None
    largest_sent_time: Any = None
    is_ack_eliciting = False
    if largest_acked > space.largest_acked_packet:
        space.largest_acked_packet = largest_acked
    cc = recovery._cc
    # A controller that takes an ACK's packets together (kachery-bbr) gets them in one call.
    acked_together = getattr(cc, "on_packets_acked", None)
    in_flight: list[QuicSentPacket] = []
    packet_numbers: list[int] | None = None
    # Direct look-ups cost at most as many as there were packets in flight, over all ranges together: an
    # ACK frame of many wide disjoint ranges (a hostile peer's) then falls back to aioquic's bisection.
    budget = len(sent_packets)
    # The acknowledged data of consecutive packets of one stream is delivered in one call (a contiguous
    # range acknowledged at once moves the send buffer on as its pieces would, one after the other).
    held_sender: QuicStreamSender | None = None
    held_start = held_stop = 0
    for r in ack_rangeset:
        if len(r) <= budget:
            budget -= len(r)
            candidates: Any = r
        else:
            if packet_numbers is None:
                packet_numbers = list(sent_packets)
            candidates = packet_numbers[bisect_left(packet_numbers, r.start) : bisect_left(packet_numbers, r.stop)]
        for packet_number in candidates:
            packet = sent_packets.pop(packet_number, None)
            if packet is None:
                continue
            if packet.is_ack_eliciting:
                is_ack_eliciting = True
                space.ack_eliciting_in_flight -= 1
            if packet.in_flight:
                if acked_together is not None:
                    in_flight.append(packet)
                else:
                    cc.on_packet_acked(packet=packet, now=now)
            largest_newly_acked = packet_number
            largest_sent_time = packet.sent_time
            for handler, args in packet.delivery_handlers:
                if handler is stream_data_delivery and not args[3]:
                    if args[0] is held_sender and args[1] == held_stop:
                        held_stop = args[2]  # contiguous with the data held back: one delivery for both
                        continue
                    if held_sender is not None:
                        stream_data_delivery(_ACKED, held_sender, held_start, held_stop, False)
                    held_sender, held_start, held_stop = args[0], args[1], args[2]
                    continue
                if held_sender is not None:  # every other handler runs in order, after the data before it
                    stream_data_delivery(_ACKED, held_sender, held_start, held_stop, False)
                    held_sender = None
                handler(_ACKED, *args)
    if held_sender is not None:
        stream_data_delivery(_ACKED, held_sender, held_start, held_stop, False)
    if in_flight and acked_together is not None:
        acked_together(now, in_flight)
    if largest_newly_acked is None:
        return
    if largest_acked == largest_newly_acked and is_ack_eliciting:
        latest_rtt = now - largest_sent_time
        ack_delay = min(ack_delay, recovery.max_ack_delay)
        rtt_latest = max(latest_rtt, 0.001)
        if rtt_latest < recovery._rtt_min:
            recovery._rtt_min = rtt_latest
        if rtt_latest > recovery._rtt_min + ack_delay:
            rtt_latest -= ack_delay
        recovery._rtt_latest = rtt_latest
        if not recovery._rtt_initialized:
            recovery._rtt_first_sample_time = now
            recovery._rtt_initialized = True
            recovery._rtt_variance = latest_rtt / 2
            recovery._rtt_smoothed = latest_rtt
        else:
            recovery._rtt_variance = 3 / 4 * recovery._rtt_variance + 1 / 4 * abs(recovery._rtt_min - rtt_latest)
            recovery._rtt_smoothed = 7 / 8 * recovery._rtt_smoothed + 1 / 8 * rtt_latest
        cc.on_rtt_measurement(now=now, rtt=latest_rtt)
        recovery._pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=recovery._rtt_smoothed)
    recovery._detect_loss(now=now, space=space)
    if recovery.peer_completed_address_validation:
        recovery._pto_count = 0
