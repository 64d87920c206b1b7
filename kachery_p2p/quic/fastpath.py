"""A fast path through aioquic's per-packet code for the common case of a connection moving data.

On a 2-core machine the transfer speed is bounded by aioquic's Python work per packet, on the
sender and on the receiver. Most of that work serves rare cases: long-header packets, migration,
path validation, rare frames checked for on every packet, a QUIC logger. ``FastPathMixin`` (mixed
into ``flow.KacheryQuicConnection``) takes over when a connection is in the common case and hands
everything else to aioquic unchanged:

- receive: a datagram holding one 1-RTT (short header) packet, on the active validated path, in the
  CONNECTED state with the handshake confirmed, is decrypted and its frames dispatched in one
  pass with the same checks and state updates as aioquic, minus the branches that cannot apply;
  STREAM frames of an existing stream skip the stream look-up and creation checks.
- send: once the handshake is confirmed, with nothing but ACK, flow-control and STREAM frames to
  send, packets are built by ``fastpath_packets.FastPacketBuilder``; when the pacer holds the
  sender back, no builder is made at all. The sender's ACK walk (``fast_on_ack_received``) does
  not copy the packets in flight on every ACK.

What goes on the wire is what aioquic would send. Every replaced aioquic function is checked at
import against a digest of its source (``compatible()``): any other aioquic turns the fast path off.
``KACHERY_P2P_QUIC_FASTPATH=0`` turns it off too (read when a connection is made).
"""

from __future__ import annotations

import hashlib
import inspect
import linecache
import os
from functools import partial
from typing import Any

import aioquic
from aioquic._crypto import AEAD, HeaderProtection
from aioquic.buffer import UINT_VAR_MAX, Buffer, BufferReadError
from aioquic.quic.connection import (
    NetworkAddress,
    QuicConnection,
    QuicConnectionError,
    QuicConnectionState,
    QuicNetworkPath,
    QuicReceiveContext,
)
from aioquic.quic.crypto import CryptoContext, CryptoError, CryptoPair, KeyUnavailableError
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import (
    NON_ACK_ELICITING_FRAME_TYPES,
    PROBING_FRAME_TYPES,
    QuicErrorCode,
    QuicFrameType,
    QuicStreamFrame,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import MAX_ACK_RANGES, QuicPacketRecovery
from aioquic.quic.stream import FinalSizeError, QuicStreamReceiver, QuicStreamSender, StreamFinishedError
from aioquic.tls import Epoch, State

from .fastpath_crypto import decrypt_one_rtt
from .fastpath_packets import fast_on_ack_received, idle_timeout
from .fastpath_send import FastSendMixin

ENV_SWITCH = "KACHERY_P2P_QUIC_FASTPATH"
# sha256 (first 16 hex digits) of the source of each aioquic function the fast path stands in for.
EXPECTED_SOURCES = {
    "QuicConnection.receive_datagram": "3c7f29826050cbfe",
    "QuicConnection.datagrams_to_send": "f4eb22c8add260fe",
    "QuicConnection._write_application": "c37bf64378f72b2f",
    "QuicConnection._payload_received": "612b67759a96c701",
    "QuicConnection._handle_stream_frame": "8c79348a854e307d",
    "QuicConnection._flush_builder": "ac4bd66d7c3892df",
    "QuicPacketBuilder.__init__": "b321fb4eb8ac7b33",
    "QuicPacketBuilder.start_frame": "53af20167bc2f0e0",
    "QuicPacketBuilder.start_packet": "63a59deba3617ddc",
    "QuicPacketBuilder._end_packet": "585948d0382505b3",
    "QuicPacketBuilder._flush_current_datagram": "e310004f68f56c55",
    "QuicPacketRecovery.on_ack_received": "1a7c693479084333",
    "QuicPacketRecovery.on_packet_sent": "a83baa6e05702f89",
    "QuicPacketRecovery.get_probe_timeout": "782ca5036a10bc2f",
    "QuicConnection._idle_timeout": "8549f45b09415b1a",
    "QuicConnection._write_stream_frame": "9bc0be962394a322",
    "CryptoPair.decrypt_packet": "2d2c3a3bf1295a27",
    "CryptoPair.encrypt_packet": "f244294823e49235",
    "CryptoContext.decrypt_packet": "fe94c52f762d3f3d",
    "CryptoContext.encrypt_packet": "fe4c0f9b61d15b01",
    "AEAD.decrypt": "3cb5f698b2ee2dc4",
    "AEAD.encrypt": "dcd48e4cec215a20",
    "AEAD._nonce": "cdb45a754af0032d",
    "HeaderProtection.apply": "dfbedf5f0cb7f981",
    "HeaderProtection.remove": "86c5aacd3c9c1024",
    "HeaderProtection._mask": "3f222c11466194ac",
    "QuicStreamReceiver.handle_frame": "c54bce9f11e6f2de",
    "RangeSet.add": "409fdd202a29b2cd",
    "RangeSet.subtract": "790c2afeb0cba510",
    "CryptoPair.key_phase": "e7a3f87d62e7b134",
    "QuicStreamSender.on_data_delivery": "675e1c2812ea3744",
    "QuicStreamSender.get_frame": "c9d68a424b94b52b",
}
_OWNERS = {
    "QuicConnection": QuicConnection,
    "QuicPacketBuilder": QuicPacketBuilder,
    "QuicPacketRecovery": QuicPacketRecovery,
    "QuicStreamSender": QuicStreamSender,
    "QuicStreamReceiver": QuicStreamReceiver,
    "RangeSet": RangeSet,
    "CryptoPair": CryptoPair,
    "CryptoContext": CryptoContext,
    "AEAD": AEAD,
    "HeaderProtection": HeaderProtection,
}


def _source_digest(name: str) -> str | None:
    owner, _, attr = name.partition(".")
    try:
        obj = getattr(_OWNERS[owner], attr)
        if isinstance(obj, property):
            obj = obj.fget
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    except (AttributeError, OSError, TypeError):
        return None


def _check_compatible() -> bool:
    if not str(getattr(aioquic, "__version__", "")).startswith("1."):
        return False
    if not hasattr(QuicConnection, "_QuicConnection__frame_handlers") and "__frame_handlers" in dir(QuicConnection):
        return False
    return all(_source_digest(name) == digest for name, digest in EXPECTED_SOURCES.items())


def _check_and_forget_sources() -> bool:
    """``_check_compatible``, then drop the source lines ``inspect`` cached (aioquic's modules: about 6,600
    lines a daemon would otherwise keep for its lifetime)."""
    cached = set(linecache.cache)
    try:
        return _check_compatible()
    finally:
        for filename in set(linecache.cache) - cached:
            linecache.cache.pop(filename, None)


_COMPATIBLE = _check_and_forget_sources()


def compatible() -> bool:
    """Whether the installed aioquic is the one the fast path was written against."""
    return _COMPATIBLE


def enabled() -> bool:
    """Whether new connections take the fast path: a compatible aioquic and not switched off."""
    return _COMPATIBLE and os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


_CONNECTED = QuicConnectionState.CONNECTED
_EPOCH_ONE_RTT = Epoch.ONE_RTT
_EPOCH_ZERO_RTT = Epoch.ZERO_RTT
_NON_ACK_ELICITING = frozenset(int(t) for t in NON_ACK_ELICITING_FRAME_TYPES)
_PROBING = frozenset(int(t) for t in PROBING_FRAME_TYPES)
_STREAM_TYPES = range(int(QuicFrameType.STREAM_BASE), int(QuicFrameType.STREAM_BASE) + 8)


class FastPathMixin(FastSendMixin):
    """Mix in before ``QuicConnection``: the fast path described in the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fp_on = enabled() and self._quic_logger is None
        self._fp_zero_rtt_clear = self._is_client
        self._fp_handlers: dict[int, Any] = {}
        self._fp_known: frozenset[int] = frozenset()
        if self._fp_on:
            table: dict[int, tuple[Any, frozenset[Epoch]]] = self._QuicConnection__frame_handlers  # type: ignore[attr-defined]
            self._fp_known = frozenset(table)
            self._fp_handlers = {t: h for t, (h, epochs) in table.items() if _EPOCH_ONE_RTT in epochs}
            if all(self._fp_handlers.get(t) == self._handle_stream_frame for t in _STREAM_TYPES):
                for t in _STREAM_TYPES:
                    self._fp_handlers[t] = self._fp_handle_stream_frame
            self._loss.on_ack_received = partial(fast_on_ack_received, self._loss)  # type: ignore[method-assign]

    # ---- receive ----

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        paths = self._network_paths
        cid_length = self._configuration.connection_id_length
        if (
            not self._fp_on
            or len(data) <= cid_length + 1
            or data[0] & 0xC0 != 0x40  # not a short header with the fixed bit
            or self._state is not _CONNECTED
            or not self._handshake_confirmed
            or self._close_at is None
            or not paths
            or paths[0].addr != addr
            or not paths[0].is_validated
            or self._peer_cid.sequence_number is None
            or not (self._fp_zero_rtt_clear or self._fp_check_zero_rtt())
        ):
            super().receive_datagram(data, addr, now=now)
            return
        self._fp_receive_one_rtt(data, paths[0], cid_length, now)

    def _fp_check_zero_rtt(self) -> bool:
        """A server takes the fast path once aioquic has torn its 0-RTT keys down."""
        self._fp_zero_rtt_clear = not self._cryptos[_EPOCH_ZERO_RTT].recv.is_valid()
        return self._fp_zero_rtt_clear

    def _fp_receive_one_rtt(self, data: bytes, network_path: QuicNetworkPath, cid_length: int, now: float) -> None:
        destination_cid = data[1 : 1 + cid_length]
        destination_cid_seq: int | None = None
        for connection_id in self._host_cids:
            if destination_cid == connection_id.cid:
                destination_cid_seq = connection_id.sequence_number
                break
        if destination_cid_seq is None:
            return  # unknown connection ID: dropped
        space = self._spaces[_EPOCH_ONE_RTT]
        crypto = self._cryptos[_EPOCH_ONE_RTT]
        try:
            result = decrypt_one_rtt(crypto, data, 1 + cid_length, space.expected_packet_number)
            if result is None:
                result = crypto.decrypt_packet(data, 1 + cid_length, space.expected_packet_number)
            plain_header, plain_payload, packet_number = result
        except KeyUnavailableError as exc:
            self._logger.debug(exc)
            if (
                self._is_client
                and self.tls.state == State.CLIENT_EXPECT_SERVER_HELLO
                and not self._crypto_retransmitted
            ):
                self._loss.reschedule_data(now=now, speed_up_handshake=True)
                self._crypto_retransmitted = True
            return
        except CryptoError as exc:
            self._logger.debug(exc)
            return
        if packet_number in space.received_packets:
            return  # duplicate (RFC 9000 section 12.3)
        if plain_header[0] & 0x18:
            self.close(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=QuicFrameType.PADDING,
                reason_phrase="Reserved bits must be zero",
            )
            return
        if packet_number > space.expected_packet_number:
            space.expected_packet_number = packet_number + 1
        if packet_number > self._spin_highest_pn:
            spin_bit = bool(plain_header[0] & 0x20)
            self._spin_bit = (not spin_bit) if self._is_client else spin_bit
            self._spin_highest_pn = packet_number

        context = QuicReceiveContext(
            epoch=_EPOCH_ONE_RTT,
            host_cid=destination_cid,
            network_path=network_path,
            quic_logger_frames=None,
            time=now,
            version=None,
        )
        is_ack_eliciting = is_probing = False
        try:
            is_ack_eliciting, is_probing = self._fp_payload_received(context, plain_payload)
        except QuicConnectionError as exc:
            self._logger.warning(exc)
            self.close(error_code=exc.error_code, frame_type=exc.frame_type, reason_phrase=exc.reason_phrase)
        if self._state is not _CONNECTED or self._close_pending:
            return

        self._close_at = now + idle_timeout(self)
        self._ack_eliciting_sent_since_receipt = False
        if not self._is_client and not is_probing and destination_cid != self.host_cid:
            self._logger.debug("Peer switching to CID %s (%d)", destination_cid.hex(), destination_cid_seq)
            self.host_cid = destination_cid
            if network_path.peer_cid is None:
                self.change_connection_id()

        # the packet arrived on the active path (checked by receive_datagram): nothing to promote
        if not space.discarded:
            if packet_number > space.largest_received_packet:
                space.largest_received_packet = packet_number
                space.largest_received_time = now
            ack_queue = space.ack_queue
            ranges: list[range] = ack_queue._RangeSet__ranges  # type: ignore[attr-defined]
            last = ranges[-1] if ranges else None
            if last is not None and packet_number == last.stop:
                ranges[-1] = range(last.start, packet_number + 1)  # RangeSet.add: extends the last range
            elif last is None or packet_number > last.stop:
                ranges.append(range(packet_number, packet_number + 1))  # RangeSet.add: a new last range
            else:
                ack_queue.add(packet_number)
            space.received_packets.add(packet_number)
            if len(ack_queue) > MAX_ACK_RANGES:
                ack_queue.shift()
            if is_ack_eliciting and space.ack_at is None:
                space.ack_at = now + self._ack_delay

    def _fp_payload_received(self, context: QuicReceiveContext, plain: bytes) -> tuple[bool, bool]:
        """aioquic's ``_payload_received`` for a 1-RTT packet (no CRYPTO frame is required there)."""
        buf = Buffer(data=plain)
        handlers = self._fp_handlers
        frame_found = False
        is_ack_eliciting = False
        is_probing = None
        while not buf.eof():
            try:
                frame_type = buf.pull_uint_var()
            except BufferReadError:
                raise QuicConnectionError(QuicErrorCode.FRAME_ENCODING_ERROR, None, "Malformed frame type") from None  # type: ignore[arg-type]
            handler = handlers.get(frame_type)
            if handler is None:
                if frame_type in self._fp_known:
                    raise QuicConnectionError(QuicErrorCode.PROTOCOL_VIOLATION, frame_type, "Unexpected frame type")
                raise QuicConnectionError(QuicErrorCode.FRAME_ENCODING_ERROR, frame_type, "Unknown frame type")
            try:
                handler(context, frame_type, buf)
            except BufferReadError:
                error = QuicErrorCode.FRAME_ENCODING_ERROR
                raise QuicConnectionError(error, frame_type, "Failed to parse frame") from None
            except StreamFinishedError:
                pass  # we lack the state for the stream, ignore the frame
            frame_found = True
            if frame_type not in _NON_ACK_ELICITING:
                is_ack_eliciting = True
            if frame_type not in _PROBING:
                is_probing = False
            elif is_probing is None:
                is_probing = True
        if not frame_found:
            raise QuicConnectionError(
                QuicErrorCode.PROTOCOL_VIOLATION, QuicFrameType.PADDING, "Packet contains no frames"
            )
        return is_ack_eliciting, bool(is_probing)

    def _fp_handle_stream_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        """aioquic's ``_handle_stream_frame``, with a short cut for a stream that exists."""
        stream_id = buf.pull_uint_var()
        offset = buf.pull_uint_var() if frame_type & 4 else 0
        length = buf.pull_uint_var() if frame_type & 2 else buf.capacity - buf.tell()
        if offset + length > UINT_VAR_MAX:
            raise QuicConnectionError(
                QuicErrorCode.FRAME_ENCODING_ERROR, frame_type, "offset + length cannot exceed 2^62 - 1"
            )
        data = buf.pull_bytes(length)
        fin = bool(frame_type & 1)
        stream = self._streams.get(stream_id)
        if stream is None:
            self._assert_stream_can_receive(frame_type, stream_id)
            stream = self._get_or_create_stream(frame_type, stream_id)
        elif (not stream_id & 1) == self._is_client and stream_id & 2:
            self._assert_stream_can_receive(frame_type, stream_id)  # our own unidirectional stream: raises
        if offset + length > stream.max_stream_data_local:
            raise QuicConnectionError(QuicErrorCode.FLOW_CONTROL_ERROR, frame_type, "Over stream data limit")
        receiver = stream.receiver
        newly_received = offset + length - receiver.highest_offset
        if newly_received < 0:
            newly_received = 0
        max_data = self._local_max_data
        if max_data.used + newly_received > max_data.value:
            raise QuicConnectionError(QuicErrorCode.FLOW_CONTROL_ERROR, frame_type, "Over connection data limit")
        if (
            length
            and not fin
            and offset == receiver._buffer_start
            and receiver._final_size is None
            and not receiver.is_finished
            and not receiver._buffer
        ):
            # QuicStreamReceiver.handle_frame's new in-order chunk, without the frame object
            if offset + length > receiver.highest_offset:
                receiver.highest_offset = offset + length
            receiver._buffer_start += length
            self._events.append(StreamDataReceived(data=data, end_stream=False, stream_id=stream_id))
        else:
            try:
                event = receiver.handle_frame(QuicStreamFrame(offset=offset, data=data, fin=fin))
            except FinalSizeError as exc:
                raise QuicConnectionError(QuicErrorCode.FINAL_SIZE_ERROR, frame_type, str(exc)) from exc
            if event is not None:
                self._events.append(event)
        max_data.used += newly_received
