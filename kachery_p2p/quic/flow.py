"""Receive windows sized to bandwidth x delay, auto-tuned and bounded: kachery-p2p's ``QuicConnection``.

aioquic doubles a receive window whenever the peer has *sent* past half of it (the highest offset
received, gaps included), so a peer that leaves a gap and keeps sending makes the window, and the
buffer holding the out-of-order bytes, grow without bound. Here the windows slide on what was
*delivered* instead (QUIC's usual rule, RFC 9000 section 4.2): the limit we advertise is the delivered
offset plus the window, re-sent when less than half the window is left. A window doubles (auto-tuning,
as quinn and Chromium do) when the application drained half of it in less than two round trips, up to
``MAX_STREAM_WINDOW`` per stream and ``MAX_CONNECTION_WINDOW`` per connection.

Memory bound: aioquic hands in-order data to the application at once, so what a connection buffers on
receive is the out-of-order data (and the zero-filled gaps before it) of its streams, which the
connection limit bounds: at most ``MAX_CONNECTION_WINDOW`` (16 MiB) per connection, whatever the peer
sends. What the application keeps of delivered data is its own business (downloads write it through).

The initial windows are the ``max_data`` / ``max_stream_data`` of the configuration
(``settings.quic_configuration``): 2 MiB per stream and 4 MiB per connection, more than
100 Mbit/s x 150 ms (1.9 MB) on the four streams a download opens, before any auto-tuning.

This class is also where a model-based congestion controller gets its own pacer (``cc_pacer``).
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from .cc_pacer import install_pacer
from .fastpath import FastPathMixin

MAX_STREAM_WINDOW = 8 * 1024 * 1024
MAX_CONNECTION_WINDOW = 16 * 1024 * 1024
# A window that is drained this many smoothed RTTs after the previous update doubles.
AUTOTUNE_RTTS = 2.0
_LIMIT_CAPACITY = 1 + 8
_STREAM_LIMIT_CAPACITY = 1 + 2 * 8


class KacheryQuicConnection(FastPathMixin, QuicConnection):
    """aioquic's connection with bounded, auto-tuned receive windows (see the module docstring),
    and a cheaper per-packet path through aioquic (``fastpath.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fc_now = 0.0
        self._fc_window = self._local_max_data.value
        self._fc_raised_at: float | None = None
        install_pacer(self._loss)
        self._on_app_limited = getattr(self._loss._cc, "on_app_limited", None)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        self._fc_now = now
        datagrams = super().datagrams_to_send(now=now)
        on_app_limited = self._on_app_limited
        if on_app_limited is not None and self._pacing_at is None:
            loss = self._loss
            if loss.bytes_in_flight + self._max_datagram_size <= loss.congestion_window:
                on_app_limited()  # neither the window nor the pacer held it back: it had nothing more to send
        return datagrams

    def _fc_autotune(self, window: int, raised_at: float | None, maximum: int) -> int:
        rtt = float(self._loss._rtt_smoothed)
        if raised_at is not None and rtt > 0 and self._fc_now - raised_at < AUTOTUNE_RTTS * rtt:
            return min(window * 2, maximum)
        return window

    def _fc_delivered(self) -> int:
        """Bytes of all streams handed to the application (received minus still out of order)."""
        pending = 0
        for stream in self._streams.values():
            receiver = stream.receiver
            pending += receiver.highest_offset - receiver._buffer_start
        return self._local_max_data.used - pending

    def _fp_limits_pending(self) -> bool:
        """Whether the two writers below would write a frame now: their conditions, without their side
        effects. The fast path (``fastpath_send``) builds no packet when nothing else is to be sent either."""
        max_data = self._local_max_data
        half = self._fc_window // 2
        if max_data.value - max_data.used < half and max_data.value - self._fc_delivered() < half:
            return True
        if max_data.value != max_data.sent:
            return True
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit.value != limit.sent and limit.sent - limit.used < limit.value - limit.sent:
                return True
        for stream in self._streams.values():
            local = stream.max_stream_data_local
            if not local:
                continue
            state: list[Any] | None = getattr(stream, "_kp_window", None)
            window = local if state is None else state[0]
            if local - stream.receiver._buffer_start < window // 2 or stream.max_stream_data_local_sent != local:
                return True
        return False

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        max_data = self._local_max_data
        window = self._fc_window
        if max_data.value - max_data.used < window // 2:
            delivered = self._fc_delivered()
            if max_data.value - delivered < window // 2:
                window = self._fc_window = self._fc_autotune(window, self._fc_raised_at, MAX_CONNECTION_WINDOW)
                self._fc_raised_at = self._fc_now
                max_data.value = max(max_data.value, delivered + window)
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # batch MAX_STREAMS as aioquic does
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=_LIMIT_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream) -> None:
        if not stream.max_stream_data_local:
            return  # a stream we only send on
        delivered = stream.receiver._buffer_start
        state: list[Any] | None = getattr(stream, "_kp_window", None)
        if state is None:
            state = [stream.max_stream_data_local, None]  # [window, raised_at]
            stream._kp_window = state  # type: ignore[attr-defined]
        if stream.max_stream_data_local - delivered < state[0] // 2:
            state[0] = self._fc_autotune(state[0], state[1], MAX_STREAM_WINDOW)
            state[1] = self._fc_now
            stream.max_stream_data_local = delivered + state[0]
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=_STREAM_LIMIT_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id or 0)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
