"""The sender's commonest packet in one step, for the fast path (``fastpath_send.py``): a 1-RTT packet
holding one STREAM frame and nothing else, as its own datagram.

``FastPacketBuilder.start_packet`` + ``write_stream_frame`` + ``FastPacketBuilder._end_packet`` (with
``encrypt_one_rtt``) build it in four calls through the builder's buffer; ``stream_packet`` builds the
same bytes directly (frame header, data, AES-GCM, header protection) and leaves the builder in the state
those calls leave it in. Anything else (a packet that also carries an ACK or a flow-control frame, a FIN
alone, a reset stream, a key update, ChaCha20) goes the general way.
"""

from __future__ import annotations

from aioquic.buffer import size_uint_var
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import PACKET_FIXED_BIT
from aioquic.quic.packet_builder import QuicPacketBuilderStop, QuicSentPacket
from aioquic.quic.stream import QuicStream

from .fastpath_crypto import NONCE_LENGTH, PACKET_NUMBER_LENGTH_MAX, SAMPLE_LENGTH
from .fastpath_packets import (
    _ONE_RTT,
    _ONE_RTT_EPOCH,
    _PN_LENGTH_BITS,
    _STREAM_WITH_LENGTH,
    FastPacketBuilder,
    stream_data_delivery,
)

_PN_LENGTH = _PN_LENGTH_BITS + 1
_SAMPLE_OFFSET = PACKET_NUMBER_LENGTH_MAX - _PN_LENGTH


def uint_var(value: int) -> bytes:
    """``Buffer.push_uint_var``'s bytes (RFC 9000 section 16)."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def stream_packet(builder: FastPacketBuilder, crypto: CryptoPair, stream: QuicStream, max_offset: int) -> int | None:
    """Build a packet of one STREAM frame of ``stream``'s oldest pending data, up to ``max_offset``, as
    the next datagram of ``builder``: the bytes newly sent (``write_stream_frame``'s answer; whether a
    packet was built shows in ``builder.packet_number``). None: not that case, use the general way.
    Raises ``QuicPacketBuilderStop`` where ``start_packet`` would."""
    sender = stream.sender
    ranges: list[range] = sender._pending._RangeSet__ranges  # type: ignore[attr-defined]
    if (
        not ranges
        or sender._reset_error_code is not None
        or builder._packet is not None
        or not builder._datagram_init
        or builder._datagram_needs_padding
        or builder._quic_logger is not None
        or crypto._update_key_requested
    ):
        return None
    send = crypto.send
    aead = send.aead
    hp = send.hp
    if aead is None or hp is None or hp._is_chacha20:
        return None
    # start_packet: a new datagram's capacities
    capacity = builder._buffer_capacity
    if builder.max_total_bytes is not None:
        remaining = builder.max_total_bytes - builder._total_bytes
        if remaining < capacity:
            capacity = builder._buffer_capacity = remaining
    flight_capacity = capacity
    if builder.max_flight_bytes is not None:
        remaining = builder.max_flight_bytes - builder._flight_bytes
        if remaining < flight_capacity:
            flight_capacity = remaining
    builder._flight_capacity = flight_capacity
    peer_cid = builder._peer_cid
    header_size = 3 + len(peer_cid)
    if header_size >= capacity:
        raise QuicPacketBuilderStop
    # write_stream_frame: as much of the first pending range as fits and flow control lets go
    stream_id = stream.stream_id
    assert stream_id is not None
    r = ranges[0]
    start = r.start
    frame_overhead = 3 + size_uint_var(stream_id) + (size_uint_var(start) if start else 0)
    stop = start + flight_capacity - header_size - crypto.aead_tag_size - frame_overhead
    if stop < start:
        return 0
    if r.stop < stop:
        stop = r.stop
    if stop > max_offset:
        stop = max_offset
    if stop <= start:
        return 0
    buffer_start = sender._buffer_start
    data = sender._buffer[start - buffer_start : stop - buffer_start]
    if stop == r.stop:  # RangeSet.subtract of the head of the first range
        del ranges[0]
    else:
        ranges[0] = range(stop, r.stop)
    previous_send_highest = sender.highest_offset
    if stop > previous_send_highest:
        sender.highest_offset = stop
    fin = sender._buffer_fin == stop
    if fin:
        sender._pending_eof = False
    payload = b"".join(
        (
            bytes((_STREAM_WITH_LENGTH | (4 if start else 0) | (1 if fin else 0),)),
            uint_var(stream_id),
            uint_var(start) if start else b"",
            (len(data) | 0x4000).to_bytes(2, "big"),
            data,
        )
    )
    # _end_packet with encrypt_one_rtt: header, AES-GCM, header protection (never padding: >= 5 bytes)
    packet_number = builder._packet_number
    first = PACKET_FIXED_BIT | (builder._spin_bit << 5) | (crypto.recv.key_phase << 2) | _PN_LENGTH_BITS
    truncated = (packet_number & 0xFFFF).to_bytes(_PN_LENGTH, "big")
    header = bytes((first,)) + peer_cid + truncated
    protected = aead._aead.encrypt((aead._iv ^ packet_number).to_bytes(NONCE_LENGTH, "big"), payload, header)
    mask = hp._encryptor.update(protected[_SAMPLE_OFFSET : _SAMPLE_OFFSET + SAMPLE_LENGTH])
    pn = int.from_bytes(truncated, "big") ^ int.from_bytes(mask[1 : 1 + _PN_LENGTH], "big")
    datagram = b"".join(
        (bytes((first ^ (mask[0] & 0x1F),)), peer_cid, pn.to_bytes(_PN_LENGTH, "big"), protected)
    )
    sent_bytes = len(datagram)
    packet = QuicSentPacket(
        _ONE_RTT_EPOCH, True, True, False, packet_number, _ONE_RTT, None, sent_bytes,
        [(stream_data_delivery, (sender, start, stop, fin))],
    )  # fmt: skip
    builder._packet_type = _ONE_RTT
    builder._header_size = header_size
    builder._packets.append(packet)
    builder._datagrams.append(datagram)
    builder._datagram_flight_bytes = sent_bytes
    builder._flight_bytes += sent_bytes
    builder._total_bytes += sent_bytes
    builder._packet_number = packet_number + 1
    return sender.highest_offset - previous_send_highest
