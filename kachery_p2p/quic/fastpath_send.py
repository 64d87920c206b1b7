"""The sending half of the fast path (``fastpath.py``): ``FastSendMixin.datagrams_to_send`` for the
common case of a connection moving data, with ``fastpath_packets.FastPacketBuilder``; no packet is built
when nothing can be written; aioquic's code for everything else.

Per call, not per packet (with a pacing controller a call sends one or two packets): the 1-RTT packet
space and crypto pair are looked up once per connection (aioquic makes them when the connection starts:
``tls.Epoch`` is a plain ``Enum``, hashed in Python on every look-up); one builder serves every call of
a connection (``FastPacketBuilder.reuse``); whether a flow-control frame is due is asked once per call
(what it depends on changes only when data is received or when the writers write).
"""

from __future__ import annotations

from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState, QuicNetworkPath
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicPacketBuilderStop
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream, QuicStreamSender
from aioquic.tls import Epoch

from .fastpath_packets import MIN_FIRST_FRAME, FastPacketBuilder, idle_timeout, write_stream_frame
from .fastpath_stream import stream_packet

_ONE_RTT = QuicPacketType.ONE_RTT
_EPOCH_ONE_RTT = Epoch.ONE_RTT
_CONNECTED = QuicConnectionState.CONNECTED


class FastSendMixin(QuicConnection):
    """The sending half of ``fastpath.FastPathMixin``: used when ``_fp_on`` is set."""

    _fp_on: bool
    # the 1-RTT space, crypto pair and crypto stream sender, looked up once the handshake is confirmed:
    # aioquic makes them at connect / at a server's first datagram (``_initialize``), never after
    _fp_space: QuicPacketSpace | None = None
    _fp_crypto: CryptoPair
    _fp_crypto_sender: QuicStreamSender
    _fp_builder: FastPacketBuilder | None = None

    def _fp_one_rtt_space(self) -> QuicPacketSpace:
        space = self._fp_space = self._spaces[_EPOCH_ONE_RTT]
        self._fp_crypto = self._cryptos[_EPOCH_ONE_RTT]
        self._fp_crypto_sender = self._crypto_streams[_EPOCH_ONE_RTT].sender
        return space

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
        space = self._fp_space
        if space is None:
            space = self._fp_one_rtt_space()
        self._pacing_at = None
        ack_at = space.ack_at
        if ack_at is None or ack_at >= now:
            # aioquic's first step: when the pacer holds the sender back, nothing is built
            self._pacing_at = self._loss._pacer.next_send_time(now=now)
            if self._pacing_at is not None:
                return []
        common = self._fp_common_case(network_path)
        limits = not common or self._fp_limits_pending()
        if not limits and (ack_at is None or ack_at > now) and not self._fp_streams_to_write():
            return []  # no ACK due, no stream data, no limit to raise: aioquic would build an empty packet
        loss = self._loss
        builder = self._fp_builder
        if builder is None:
            builder = self._fp_builder = FastPacketBuilder(
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
        else:
            builder.reuse(self.host_cid, self._peer_cid.cid, self._packet_number, self._spin_bit)
        builder.max_flight_bytes = loss.congestion_window - loss.bytes_in_flight
        if self._probe_pending and builder.max_flight_bytes < self._max_datagram_size:
            builder.max_flight_bytes = self._max_datagram_size
        if not network_path.is_validated:
            builder.max_total_bytes = network_path.bytes_received * 3 - network_path.bytes_sent
        try:
            if common:
                self._fp_write_application(builder, space, now, limits)
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
            or not self._fp_crypto.send.is_valid()
            or not self._fp_crypto_sender.buffer_is_empty
        ):
            return False
        for connection_id in self._host_cids:
            if not connection_id.was_sent:
                return False
        for stream in self._streams_queue:
            if stream.is_finished or stream.receiver.stop_pending or stream.sender.reset_pending:
                return False
        return True

    def _fp_streams_to_write(self) -> bool:
        """In the common case: whether a STREAM frame would be written."""
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
        return False

    def _fp_limits_pending(self) -> bool:
        """Whether ``_write_connection_limits`` / ``_write_stream_limits`` would write a frame now.
        Unknown here (aioquic's own writers): yes. ``flow.KacheryQuicConnection`` answers for its writers.
        Within one ``datagrams_to_send`` what this depends on changes only by those writers."""
        return True

    def _fp_max_offset(self, stream: QuicStream) -> int:
        """How far flow control lets ``stream`` send (aioquic's ``max_offset`` in ``_write_application``)."""
        max_offset = stream.sender.highest_offset + self._remote_max_data - self._remote_max_data_used
        if stream.max_stream_data_remote < max_offset:
            return stream.max_stream_data_remote
        return max_offset

    def _fp_write_stream(self, builder: FastPacketBuilder, space: QuicPacketSpace, stream: QuicStream) -> int:
        """aioquic's STREAM step of ``_write_application`` for one stream: the bytes newly sent."""
        max_offset = self._fp_max_offset(stream)
        used = write_stream_frame(builder, stream, max_offset)
        if used is None:
            used = self._write_stream_frame(builder=builder, space=space, stream=stream, max_offset=max_offset)
        self._remote_max_data_used += used
        return used

    def _fp_write_application(
        self, builder: FastPacketBuilder, space: QuicPacketSpace, now: float, limits: bool
    ) -> None:
        """aioquic's ``_write_application`` for the common case (``_fp_common_case``); ``limits``: whether
        a flow-control frame may be due (``_fp_limits_pending``)."""
        crypto = self._fp_crypto
        pacer = self._loss._pacer
        streams = self._streams
        # a frame needs at least 2 bytes besides the header and the AEAD tag (FastPacketBuilder.start_frame)
        min_room = 3 + len(self._peer_cid.cid) + crypto.aead_tag_size + MIN_FIRST_FRAME
        buf = builder._buffer
        first = True
        wrote = True  # the first packet was checked by datagrams_to_send
        while True:
            ack_at = space.ack_at
            if first:
                first = False  # the first pacing check was datagrams_to_send's
            elif ack_at is None or ack_at >= now:
                self._pacing_at = pacer.next_send_time(now=now)
                if self._pacing_at is not None:
                    break
            if builder._packet is not None:
                builder._end_packet()  # as start_packet would: the previous packet now counts in flight
            ack_due = ack_at is not None and ack_at <= now
            if not ack_due:  # is there room and anything else to write?
                if builder.max_flight_bytes - builder._flight_bytes < min_room:  # type: ignore[operator]
                    break  # the congestion window has no room for any frame but an ACK
                if not wrote and not limits and not self._fp_streams_to_write():
                    break  # (one that sent stream data goes on)
            queue = self._streams_queue
            if not ack_due and not limits and len(queue) == 1:  # a packet of one STREAM frame
                stream = queue[0]
                if stream.is_blocked or stream.sender.buffer_is_empty:
                    break  # nothing to write: an empty packet
                packet_number = builder._packet_number
                used = stream_packet(builder, crypto, stream, self._fp_max_offset(stream))
                if used is not None:
                    self._remote_max_data_used += used
                    if builder._packet_number == packet_number:
                        break  # nothing fitted, or flow control holds the stream: an empty packet
                    wrote = used > 0
                    pacer.update_after_send(now=now)
                    continue
            builder.start_packet(_ONE_RTT, crypto)
            if ack_due:
                self._write_ack_frame(builder=builder, space=space, now=now)
            if limits:
                self._write_connection_limits(builder=builder, space=space)
                for stream in streams.values():
                    self._write_stream_limits(builder=builder, space=space, stream=stream)
            wrote = False
            if len(queue) == 1:  # one stream: no service order to keep
                stream = queue[0]
                if not stream.is_blocked and not stream.sender.buffer_is_empty:
                    wrote = self._fp_write_stream(builder, space, stream) > 0
            else:
                sent: list[QuicStream] = []
                try:
                    for stream in queue:
                        if (
                            not stream.is_blocked
                            and not stream.sender.buffer_is_empty
                            and self._fp_write_stream(builder, space, stream) > 0
                        ):
                            sent.append(stream)
                finally:
                    if sent:  # served streams go to the end of the service order
                        self._streams_queue = [s for s in queue if s not in sent] + sent
                wrote = bool(sent)
            if buf.tell() - builder._packet_start <= builder._header_size:
                break  # the packet is empty (aioquic's builder.packet_is_empty)
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
        space = self._fp_space
        assert space is not None
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
