"""A pacer that sends at the rate a model-based congestion controller asks for.

aioquic's pacer derives its rate from ``congestion_window / smoothed_rtt``, which suits reno and cubic.
A model-based controller (``quic/bbr.py``) paces at ``pacing_gain x bottleneck bandwidth`` and keeps a
congestion window of about twice the bandwidth-delay product only as a cap on bytes in flight; it says
so with a ``pacing_rate`` attribute (bytes per second, or None before it has an estimate). This pacer
uses that rate when there is one and aioquic's rule otherwise; controllers without the attribute keep
aioquic's own pacer.
"""

from __future__ import annotations

from aioquic.quic.recovery import K_MICRO_SECOND, K_SECOND, QuicPacketPacer, QuicPacketRecovery


class ControllerPacer(QuicPacketPacer):
    """``QuicPacketPacer`` whose rate comes from the controller's ``pacing_rate`` when it has one."""

    def __init__(self, *, max_datagram_size: int, controller: object) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._controller = controller

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate = getattr(self._controller, "pacing_rate", None)
        if not rate:
            super().update_rate(congestion_window, smoothed_rtt)
            return
        size = self._max_datagram_size
        self.packet_time = max(K_MICRO_SECOND, min(size / rate, K_SECOND))
        # Bursts of up to ~1 ms of data (at least 2, at most 16 datagrams) go back to back.
        self.bucket_max = max(2 * size, min(int(rate * 0.001), 16 * size)) / rate
        if self.bucket_time > self.bucket_max:
            self.bucket_time = self.bucket_max


def install_pacer(recovery: QuicPacketRecovery) -> None:
    """Give ``recovery`` a ControllerPacer if its congestion controller sets its own pacing rate."""
    controller = recovery._cc
    if hasattr(controller, "pacing_rate"):
        recovery._pacer = ControllerPacer(max_datagram_size=recovery._pacer._max_datagram_size, controller=controller)
