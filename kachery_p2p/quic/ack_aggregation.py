"""How many bytes ACKs delivered beyond what the bandwidth estimate explains (Linux BBR's ACK-aggregation
estimate, ``bbr_update_ack_aggregation``), sans-IO: the extra window a BBR sender carries so that ACKs
held up and released in bursts (a busy receiver's event loop, a host scheduling a user-space delay line)
do not leave it idle at its window. Without it a busy pair of daemons on a 100 Mbit/s, 20 ms path held
the window at 1.7x the measured rate x RTT and the rate at 0.7-0.8 of the link."""

from __future__ import annotations

WINDOW_ROUNDS = 5  # the estimate is the max over the last 5-10 round trips (two windows of 5)
MAX_SECONDS = 0.1  # at most 100 ms of the bandwidth estimate


class AckAggregation:
    """The excess of bytes acknowledged over bandwidth x time since an aggregation epoch began."""

    def __init__(self) -> None:
        self.extra = 0  # the estimate, in bytes: what the window carries on top
        self._epoch_start = 0.0
        self._epoch_acked = 0
        self._max = [0, 0]
        self._index = 0
        self._rounds = 0

    def on_ack(self, now: float, acked: int, btl_bw: float, cwnd: int) -> None:
        """``acked`` bytes were acknowledged at ``now``; the estimate is bounded by the window, as in Linux."""
        expected = btl_bw * (now - self._epoch_start)
        if self._epoch_acked <= expected:  # ACKs at or below the estimated rate: a new epoch
            self._epoch_acked = 0
            self._epoch_start = now
            expected = 0.0
        self._epoch_acked += acked
        extra = min(int(self._epoch_acked - expected), cwnd)
        if extra > self._max[self._index]:
            self._max[self._index] = extra
            self.extra = min(max(self._max), int(btl_bw * MAX_SECONDS))

    def new_round(self, btl_bw: float) -> None:
        """A round trip ended: every WINDOW_ROUNDS of them the older window is forgotten."""
        self._rounds += 1
        if self._rounds >= WINDOW_ROUNDS:
            self._rounds = 0
            self._index ^= 1
            self._max[self._index] = 0
            self.extra = min(max(self._max), int(btl_bw * MAX_SECONDS))
