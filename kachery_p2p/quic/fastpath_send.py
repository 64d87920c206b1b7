"""The sending half of the fast path: a cheaper ``QuicPacketBuilder`` for 1-RTT packets, a cheaper
ACK walk for the sender, and ``FastSendMixin`` (``datagrams_to_send`` for the common case).

aioquic's builder serves every packet type; most of its per-packet checks are about long-header
packets (INITIAL padding, coalescing, length fields). ``FastPacketBuilder`` handles 1-RTT packets
with the same rules in fewer steps and hands a lone 1-RTT packet over as its datagram without the
two copies through the builder's buffer; other packet types go to aioquic's code. The bytes on the
wire are the same as aioquic's.

``fast_on_ack_received`` replaces ``QuicPacketRecovery.on_ack_received`` on one recovery object:
aioquic copies the list of all packets in flight on every ACK to bisect it; this visits the
acknowledged packet numbers directly when a range is no longer than what is in flight (and bisects
as aioquic does otherwise, so a peer's huge ranges cost no more than with aioquic).

``fastpath.py`` checks at import that the aioquic code these replace is the code they were written
against (``compatible()``), and uses them only then.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic.congestion.base import K_GRANULARITY
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState, QuicNetworkPath
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
from aioquic.tls import Epoch

_ONE_RTT = QuicPacketType.ONE_RTT
_ONE_RTT_EPOCH = Epoch.ONE_RTT
_EPOCH_ONE_RTT = Epoch.ONE_RTT
_CONNECTED = QuicConnectionState.CONNECTED
_ACKED = QuicDeliveryState.ACKED
# Plain ints: membership of an int in a set of IntEnum members is as fast, this spells the intent.
_NON_IN_FLIGHT = frozenset(int(t) for t in NON_IN_FLIGHT_FRAME_TYPES)
_NON_ACK_ELICITING = frozenset(int(t) for t in NON_ACK_ELICITING_FRAME_TYPES)
_CRYPTO = int(QuicFrameType.CRYPTO)
_PATH_FRAMES = frozenset((int(QuicFrameType.PATH_CHALLENGE), int(QuicFrameType.PATH_RESPONSE)))
_MIN_FIRST_FRAME = PACKET_NUMBER_MAX_SIZE - PACKET_NUMBER_SEND_SIZE
_PN_LENGTH_BITS = PACKET_NUMBER_SEND_SIZE - 1
_EMPTY: Sequence[Any] = ()


class FastPacketBuilder(QuicPacketBuilder):
    """``QuicPacketBuilder`` with cheaper 1-RTT packets (same bytes on the wire)."""

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
        if tell - self._packet_start <= self._header_size and capacity < _MIN_FIRST_FRAME:
            capacity = _MIN_FIRST_FRAME  # room for the header protection sample (RFC 9001 5.4.2)
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
            padding_size = _MIN_FIRST_FRAME + header_size - packet_size
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
            encrypted = crypto.encrypt_packet(plain[:header_size], plain[header_size:packet_size], packet_number)
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
    packet_numbers: list[int] | None = None
    for r in ack_rangeset:
        if len(r) <= len(sent_packets):
            candidates: Any = r  # at most as many look-ups as packets in flight
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
                cc.on_packet_acked(packet=packet, now=now)
            largest_newly_acked = packet_number
            largest_sent_time = packet.sent_time
            for handler, args in packet.delivery_handlers:
                handler(_ACKED, *args)
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


class FastSendMixin(QuicConnection):
    """The sending half of ``fastpath.FastPathMixin``: used when ``_fp_on`` is set."""

    _fp_on: bool

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        paths = self._network_paths
        if (
            not self._fp_on
            or self._state is not _CONNECTED
            or self._close_pending
            or not self._handshake_confirmed
            or len(paths) != 1
            or (self._is_client and self._remote_preferred_address is not None)
        ):
            return super().datagrams_to_send(now=now)
        network_path = paths[0]
        space = self._spaces[_EPOCH_ONE_RTT]
        self._pacing_at = None
        ack_at = space.ack_at
        if ack_at is None or ack_at >= now:
            # aioquic's first step: when the pacer holds the sender back, nothing is built
            self._pacing_at = self._loss._pacer.next_send_time(now=now)
            if self._pacing_at is not None:
                return []
        common = self._fp_common_case(network_path)
        if common and (ack_at is None or ack_at > now) and not self._fp_anything_to_write():
            return []  # no ACK due, no stream data, no limit to raise: aioquic would build an empty packet
        loss = self._loss
        builder = FastPacketBuilder(
            host_cid=self.host_cid,
            is_client=self._is_client,
            max_datagram_size=self._max_datagram_size,
            packet_number=self._packet_number,
            peer_cid=self._peer_cid.cid,
            peer_token=self._peer_token,
            quic_logger=None,
            spin_bit=self._spin_bit,
            version=self._version,  # type: ignore[arg-type]  # set once connected, as aioquic assumes
        )
        builder.max_flight_bytes = loss.congestion_window - loss.bytes_in_flight
        if self._probe_pending and builder.max_flight_bytes < self._max_datagram_size:
            builder.max_flight_bytes = self._max_datagram_size
        if not network_path.is_validated:
            builder.max_total_bytes = network_path.bytes_received * 3 - network_path.bytes_sent
        try:
            if common:
                self._fp_write_application(builder, space, now)
            else:
                self._write_application(builder, network_path, now)
        except QuicPacketBuilderStop:
            pass
        return self._fp_flush_builder(builder, network_path, now)

    def _fp_common_case(self, network_path: QuicNetworkPath) -> bool:
        """Nothing but ACK, flow-control and STREAM frames can be pending: no rare frame to look for."""
        if (
            not self._handshake_complete
            or not (network_path.is_validated or network_path.local_challenge_sent)
            or self._handshake_done_pending
            or network_path.remote_challenges
            or self._retire_connection_ids
            or self._streams_blocked_pending
            or self._ping_pending
            or self._probe_pending
            or self._datagrams_pending
            or not self._cryptos[_EPOCH_ONE_RTT].send.is_valid()
            or not self._crypto_streams[_EPOCH_ONE_RTT].sender.buffer_is_empty
        ):
            return False
        for connection_id in self._host_cids:
            if not connection_id.was_sent:
                return False
        for stream in self._streams_queue:
            if stream.is_finished or stream.receiver.stop_pending or stream.sender.reset_pending:
                return False
        return True

    def _fp_anything_to_write(self) -> bool:
        """In the common case without an ACK due: whether a STREAM or flow-control frame would be written."""
        for stream in self._streams_queue:
            sender = stream.sender
            if stream.is_blocked or sender.buffer_is_empty:
                continue
            if not len(sender._pending):
                if sender._pending_eof:
                    return True  # a FIN alone
                continue  # QuicStreamSender.get_frame would find nothing (and mark the buffer empty)
            max_offset = sender.highest_offset + self._remote_max_data - self._remote_max_data_used
            if stream.max_stream_data_remote < max_offset:
                max_offset = stream.max_stream_data_remote
            if sender._pending[0].start < max_offset:
                return True  # otherwise flow control holds the stream back
        return self._fp_limits_pending()

    def _fp_limits_pending(self) -> bool:
        """Whether ``_write_connection_limits`` / ``_write_stream_limits`` would write a frame now.
        Unknown here (aioquic's own writers): yes. ``flow.KacheryQuicConnection`` answers for its writers."""
        return True

    def _fp_write_application(self, builder: QuicPacketBuilder, space: Any, now: float) -> None:
        """aioquic's ``_write_application`` for the common case (``_fp_common_case``)."""
        crypto = self._cryptos[_EPOCH_ONE_RTT]
        pacer = self._loss._pacer
        streams = self._streams
        # a frame needs at least 2 bytes besides the header and the AEAD tag (FastPacketBuilder.start_frame)
        min_room = 3 + len(self._peer_cid.cid) + crypto.aead_tag_size + _MIN_FIRST_FRAME
        first = True
        packets_built = 0
        while True:
            if not first:
                ack_at = space.ack_at
                if ack_at is None or ack_at >= now:
                    self._pacing_at = pacer.next_send_time(now=now)
                    if self._pacing_at is not None:
                        break
            first = False  # the first pacing check was datagrams_to_send's
            if builder._packet is not None:
                builder._end_packet()  # as start_packet would: the previous packet now counts in flight
            ack_at = space.ack_at
            if ack_at is None or ack_at > now:  # no ACK due: is there room and anything else to write?
                if builder.max_flight_bytes - builder._flight_bytes < min_room:  # type: ignore[operator]
                    break  # the congestion window has no room for any frame but an ACK
                if packets_built and not self._fp_anything_to_write():
                    break  # (the first packet was checked by datagrams_to_send)
            packets_built += 1
            builder.start_packet(_ONE_RTT, crypto)
            if space.ack_at is not None and space.ack_at <= now:
                self._write_ack_frame(builder=builder, space=space, now=now)
            self._write_connection_limits(builder=builder, space=space)
            for stream in streams.values():
                self._write_stream_limits(builder=builder, space=space, stream=stream)
            sent: list[Any] = []
            queue = self._streams_queue
            try:
                for stream in queue:
                    sender = stream.sender
                    if not stream.is_blocked and not sender.buffer_is_empty:
                        used = self._write_stream_frame(
                            builder=builder,
                            space=space,
                            stream=stream,
                            max_offset=min(
                                sender.highest_offset + self._remote_max_data - self._remote_max_data_used,
                                stream.max_stream_data_remote,
                            ),
                        )
                        self._remote_max_data_used += used
                        if used > 0:
                            sent.append(stream)
            finally:
                if sent:  # served streams go to the end of the service order
                    self._streams_queue = [s for s in queue if s not in sent] + sent
            if builder.packet_is_empty:
                break
            pacer.update_after_send(now=now)

    def _fp_flush_builder(
        self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> list[tuple[bytes, NetworkAddress]]:
        """aioquic's ``_flush_builder`` for 1-RTT packets only (no HANDSHAKE packet, no logger)."""
        datagrams, packets = builder.flush()
        if not datagrams:
            return []
        self._packet_number = builder.packet_number
        loss = self._loss
        cc = loss._cc
        space = self._spaces[_EPOCH_ONE_RTT]
        sent_packets = space.sent_packets
        arms_pto = loss.handshake_confirmed or not space.is_application_data
        for packet in packets:
            # QuicPacketRecovery.on_packet_sent, inline (no QUIC logger here)
            packet.sent_time = now
            sent_packets[packet.packet_number] = packet
            if packet.is_ack_eliciting:
                space.ack_eliciting_in_flight += 1
            if packet.in_flight:
                if packet.is_ack_eliciting and arms_pto:
                    loss._time_of_last_sent_ack_eliciting_packet = now
                cc.on_packet_sent(packet=packet)
            if packet.is_ack_eliciting and not self._ack_eliciting_sent_since_receipt:
                self._close_at = now + idle_timeout(self)
                self._ack_eliciting_sent_since_receipt = True
        addr = network_path.addr
        network_path.bytes_sent += sum(len(d) for d in datagrams)
        return [(d, addr) for d in datagrams]
