"""A pacer that sends at the rate a model-based congestion controller asks for.

aioquic's pacer derives its rate from ``congestion_window / smoothed_rtt``, which suits reno and cubic.
A model-based controller (``quic/bbr.py``) paces at ``pacing_gain x bottleneck bandwidth`` and keeps a
congestion window of about twice the bandwidth-delay product only as a cap on bytes in flight; it says
so with a ``pacing_rate`` attribute (bytes per second, or None before it has an estimate). This pacer
uses that rate when there is one and aioquic's rule otherwise; controllers without the attribute keep
aioquic's own pacer.

It also paces for real: aioquic's pacer lets a packet go whenever its token bucket holds *any* credit
and then empties it, so a sender asked often enough (every ACK) sends at the rate it is asked, not at
the pacing rate. Here a packet needs a whole packet time of credit.

A daemon's timers are not precise (an asyncio timer fires a millisecond or more late, later on a busy
machine), so pacing one packet per wake-up would both spin and send too slowly. When held back, the
sender waits until about a millisecond of credit has built up and then sends it as one burst; unused
credit is kept up to a quarter of the RTT (2-10 ms), so a late wake-up catches up instead of losing rate.
"""

from __future__ import annotations

from aioquic.quic.recovery import K_MICRO_SECOND, K_SECOND, QuicPacketPacer, QuicPacketRecovery

WAKE_QUANTUM = 0.001
MIN_BURST_TIME = 0.002
MAX_BURST_TIME = 0.010


class ControllerPacer(QuicPacketPacer):
    """``QuicPacketPacer`` whose rate comes from the controller's ``pacing_rate`` when it has one."""

    def __init__(self, *, max_datagram_size: int, controller: object) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._controller = controller

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]  # aioquic returns None too
        if not getattr(self._controller, "pacing_rate", None):
            return super().next_send_time(now=now)  # the controller does not pace (yet, or on a LAN)
        if self.packet_time is None:
            return None
        self.update_bucket(now=now)
        if self.bucket_time < self.packet_time * 0.999:
            # Never ask for a wake-up sooner than a millisecond: uvloop's timers are whole milliseconds
            # and fire at once when asked for less, so the sender would spin until the credit is there.
            target = min(self.bucket_max, max(self.packet_time, WAKE_QUANTUM))
            return now + max(target - self.bucket_time, WAKE_QUANTUM)
        return None

    def update_after_send(self, now: float) -> None:
        if not getattr(self._controller, "pacing_rate", None):
            super().update_after_send(now=now)
        elif self.packet_time is not None:
            self.update_bucket(now=now)
            self.bucket_time = max(0.0, self.bucket_time - self.packet_time)

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate = getattr(self._controller, "pacing_rate", None)
        if not rate:
            super().update_rate(congestion_window, smoothed_rtt)
            return
        size = self._max_datagram_size
        self.packet_time = max(K_MICRO_SECOND, min(size / rate, K_SECOND))
        burst_time = min(max(smoothed_rtt / 4, MIN_BURST_TIME), MAX_BURST_TIME)
        self.bucket_max = max(2 * size / rate, burst_time, self.packet_time)
        if self.bucket_time > self.bucket_max:
            self.bucket_time = self.bucket_max


def install_pacer(recovery: QuicPacketRecovery) -> None:
    """Give ``recovery`` a ControllerPacer if its congestion controller sets its own pacing rate."""
    controller = recovery._cc
    if hasattr(controller, "pacing_rate"):
        recovery._pacer = ControllerPacer(max_datagram_size=recovery._pacer._max_datagram_size, controller=controller)
