"""A BBR-style model-based congestion controller for aioquic, sans-IO (registered as ``"kachery-bbr"``).

The model: the bottleneck bandwidth is the maximum delivery rate measured over the last 10 round trips,
the propagation delay the minimum RTT of the last 10 s; their product is the bandwidth-delay product
(BDP). The sender paces at ``pacing_gain x bandwidth`` (through ``cc_pacer.ControllerPacer``) and
keeps at most ``cwnd_gain x BDP`` in flight. States as in BBRv1:

- STARTUP paces at 2.89x, doubling the rate each round, until the bandwidth stops growing by 25 % for
  three rounds; DRAIN then empties the queue startup built (0.35x until in flight <= BDP);
- PROBE_BW cycles the pacing gain through 1.25, 0.75, 1, 1, 1, 1, 1, 1 (one phase per min RTT): probe
  for more bandwidth, drain what the probe queued, cruise;
- PROBE_RTT: when the min RTT is 10 s old, keep 4 packets in flight for 200 ms to measure it again.

Random loss does not reduce the rate (the delivery rate already excludes lost packets), which is what
keeps the goodput of a lossy WAN path near the link rate where reno halves its window on every loss.
Loss that says "the queue overflowed" does (a simplified BBRv2 bound, to share with loss-based TCP):
a round trip losing more than 2 % of its bytes (``QUEUED_LOSS_THRESHOLD``, at least 3 packets) while the
RTT shows a standing queue, or 15 % (``LOSS_THRESHOLD``, a policer) without one, caps bytes in flight at
0.85x what that round sent but never below 1.25 BDP (``inflight_hi``); the cap grows again by 25 % per
probing cycle without such a round, at most every 2 s (``PROBE_UP_INTERVAL``). The window and the cap
also carry the bytes ACKs delivered beyond what the bandwidth estimate explains (Linux BBR's ACK-aggregation
estimate, at most 100 ms of it): busy hosts acknowledge in bursts. Rounds in which the sender had less to
send than it could (``on_app_limited``) neither end startup nor lower the bandwidth estimate.
On a LAN (minimum RTT under ``LAN_RTT``) it neither paces nor bounds the window on loss, and the window is
sized to the RTT busy hosts give (``_round_time``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from aioquic.quic.congestion.base import K_INITIAL_WINDOW, QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket

from .ack_aggregation import AckAggregation

NAME = "kachery-bbr"
STARTUP_GAIN = 2.885  # 2 / ln 2
DRAIN_GAIN = 1 / STARTUP_GAIN
CWND_GAIN = 2.0
PROBE_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BW_WINDOW_ROUNDS = 10
MIN_RTT_WINDOW = 10.0
PROBE_RTT_DURATION = 0.2
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
LOSS_THRESHOLD = 0.15  # loss with no queue in sight: only a policer's (or a broken link's) counts
INFLIGHT_HI_BETA = 0.85
LOSS_EVENTS = 3
QUEUED_LOSS_THRESHOLD = 0.02  # BBRv2's loss_thresh
QUEUE_RTT_FACTOR = 1.5  # RTT above 1.5x the minimum (+2 ms): a standing queue, not the 1.25x probe's
MIN_PACKETS = 4
PROBE_UP_INTERVAL = 2.0  # s between raises of the loss cap: a loss-based flow regrows its window that slowly
HOST_DELAY = 0.01  # how late a busy host's event loop may acknowledge: the largest RTT believed over the minimum
LAN_RTT = 0.003  # below this minimum RTT the window alone paces: timers would only cost CPU

STARTUP, DRAIN, PROBE_BW, PROBE_RTT = "startup", "drain", "probe_bw", "probe_rtt"


class BbrCongestionControl(QuicCongestionControl):
    """BBRv1 with a BBRv2-style loss bound (see the module docstring); ``now`` always comes from aioquic."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._mss = max_datagram_size
        self.state = STARTUP
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self.pacing_rate: float | None = None
        # delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation)
        self._delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        # id(packet) -> delivered, delivered_time, first_sent, app-limited when sent
        self._sent: dict[int, tuple[int, float, float, bool]] = {}
        # While the sender has less to send than it may, samples say how fast the application was, not the
        # path: they count only when they raise the estimate, and startup does not judge its rounds by them.
        # Nonzero: the sender is app-limited until ``_delivered`` passes this mark (draft-cheng-iccrg-
        # delivery-rate-estimation 3.3 / Linux tcp_rate_check_app_limited).
        self._app_limited_until = 0
        # the model
        self._bw_samples: deque[tuple[int, float]] = deque()  # (round, max rate that round), bytes/s
        self.btl_bw = 0.0
        self.min_rtt = math.inf
        self._latest_rtt = 0.0
        self._smoothed_rtt = 0.0
        self._min_rtt_stamp = 0.0
        # round trips
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_lost = 0
        self._round_acked = 0
        self._high_loss_this_cycle = False
        self._bound_stamp = 0.0
        # startup
        self._full_bw = 0.0
        self._full_bw_count = 0
        self.filled_pipe = False
        # probe_bw / probe_rtt
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._probe_rtt_done: float | None = None
        self._prior_cwnd = 0
        self.inflight_hi = math.inf
        self._cycle_time = 0.0
        self._cwnd_target = 0
        self.aggregation = AckAggregation()  # bytes ACKed beyond the estimate: carried on top of the window
        self._refresh()

    # -- the model ------------------------------------------------------------------------------
    def bdp(self, gain: float = 1.0) -> int:
        if self.btl_bw == 0 or math.isinf(self.min_rtt):
            return K_INITIAL_WINDOW * self._mss
        return int(gain * self.btl_bw * self.min_rtt)

    def _update_bw(self, rate: float) -> None:
        """Take a delivery-rate sample into the windowed maximum (one entry per round; per ACK this is a
        comparison, the window slides once per round)."""
        samples = self._bw_samples
        round_count = self.round_count
        if samples and samples[-1][0] == round_count:
            if rate <= samples[-1][1]:
                return
            samples[-1] = (round_count, rate)
            if rate > self.btl_bw:
                self.btl_bw = rate
            return
        samples.append((round_count, rate))
        oldest = round_count - BW_WINDOW_ROUNDS
        expired = False
        while samples[0][0] <= oldest:
            samples.popleft()
            expired = True
        if expired:
            self.btl_bw = max(sample for _, sample in samples)
        elif rate > self.btl_bw:
            self.btl_bw = rate

    def on_app_limited(self) -> None:
        """The sender ran out of data with room left under the window and the pacer (called by the
        connection after it wrote what it had)."""
        self._app_limited_until = max(1, self._delivered + self.bytes_in_flight)

    # -- aioquic's interface ------------------------------------------------------------------
    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        sent_time = packet.sent_time or 0.0
        if self.bytes_in_flight == 0:
            self._first_sent_time = sent_time
            self._delivered_time = sent_time
        self._sent[id(packet)] = (
            self._delivered, self._delivered_time, self._first_sent_time, self._app_limited_until > 0
        )
        self.bytes_in_flight += packet.sent_bytes

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.on_packets_acked(now, (packet,))

    def on_packets_acked(self, now: float, packets: Iterable[QuicSentPacket]) -> None:
        """The packets one ACK frame newly acknowledged (the fast path hands them over together; aioquic
        one at a time). One rate sample, from the most recently sent of them, and one update of the model
        per ACK, as Linux BBR does: the model's per-ACK work is not repeated for every packet."""
        acked = 0
        newest: tuple[int, float, float, bool] | None = None
        newest_sent = 0.0
        sent = self._sent
        for packet in packets:
            acked += packet.sent_bytes
            state = sent.pop(id(packet), None)
            if state is not None and (newest is None or state[0] >= newest[0]):
                newest, newest_sent = state, packet.sent_time or now
        self.bytes_in_flight -= acked
        self._delivered += acked
        self._delivered_time = now
        self._round_acked += acked
        if self._app_limited_until and self._delivered > self._app_limited_until:
            self._app_limited_until = 0
        if newest is None:
            return
        delivered_then, delivered_time_then, first_sent_then, app_limited = newest
        self._first_sent_time = newest_sent
        interval = max(newest_sent - first_sent_then, now - delivered_time_then)
        rate = (self._delivered - delivered_then) / interval if interval > 0 else 0.0
        if delivered_then >= self._next_round_delivered:
            self._new_round(now, app_limited)
        if rate > 0 and (not app_limited or rate >= self.btl_bw):
            btl_bw = self.btl_bw
            self._update_bw(rate)
            if self.btl_bw != btl_bw:
                self._refresh()
        self._update_state(now)
        self.aggregation.on_ack(now, acked, self.btl_bw, self.congestion_window)
        self._update_cwnd(acked)

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(id(packet), None)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(id(packet), None)
            self._round_lost += packet.sent_bytes
        # Past startup, react within the round (sharing with loss-based flows needs it); early in a round
        # a few random losses are a large fraction of little, so judge at least a BDP's worth.
        lost, acked = self._round_lost, self._round_acked
        if self.state != STARTUP and self._too_lossy(lost, max(lost + acked, self.bdp()), self._loss_threshold()):
            self._bound_inflight(lost + acked, now)
        self._refresh()

    def _loss_threshold(self) -> float:
        """Loss while a standing queue inflates the RTT is the queue overflowing: 2 % counts. Loss with the
        queue near empty is the path's own, random, and says nothing about the rate: only 15 % counts.
        On a LAN (minimum RTT under LAN_RTT) loss does not bound the window at all: rounds of a few packets
        make any loss a large fraction, and the RTT measures busy hosts, not a queue (1 % random loss on a
        0.5 ms, 100 Mbit/s link held the window at 7 packets and the rate at 4-5 MB/s; reno 10)."""
        if self.min_rtt < LAN_RTT:
            return math.inf
        queued = self._latest_rtt > QUEUE_RTT_FACTOR * self.min_rtt + 0.002
        return QUEUED_LOSS_THRESHOLD if queued else LOSS_THRESHOLD

    def _too_lossy(self, lost: int, total: int, threshold: float) -> bool:
        return lost >= LOSS_EVENTS * self._mss and lost > threshold * total

    def _bound_inflight(self, sent: int, now: float) -> None:
        """The queue overflowed: cap bytes in flight (inflight_hi) and leave startup."""
        # Never below 1.25 BDP: a cap at the estimate itself lets no sample exceed it, so every slow
        # sample (a late ACK, a busy receiver) would ratchet the estimate and the cap down together.
        floor = self.bdp(PROBE_GAINS[0]) + 3 * self._mss
        self.inflight_hi = max(floor, INFLIGHT_HI_BETA * max(sent, self.bytes_in_flight), MIN_PACKETS * self._mss)
        self._high_loss_this_cycle = True
        self._bound_stamp = now
        self._round_lost = self._round_acked = 0
        self.congestion_window = min(self.congestion_window, int(self.inflight_hi))
        if self.state == STARTUP:
            self.filled_pipe = True
            self._enter(DRAIN, now)

    def on_persistent_congestion(self) -> None:
        self.congestion_window = MIN_PACKETS * self._mss

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        self._latest_rtt = rtt
        self._smoothed_rtt = rtt if not self._smoothed_rtt else 0.875 * self._smoothed_rtt + 0.125 * rtt
        if rtt <= self.min_rtt or now - self._min_rtt_stamp > MIN_RTT_WINDOW:
            expired = now - self._min_rtt_stamp > MIN_RTT_WINDOW and rtt > self.min_rtt
            self.min_rtt = rtt
            self._min_rtt_stamp = now
            if expired and self.state != PROBE_RTT and self.filled_pipe:
                self._prior_cwnd = self.congestion_window
                self._enter(PROBE_RTT, now)
        self._refresh()

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(state=self.state, btl_bw=int(self.btl_bw), min_rtt=self.min_rtt)
        return data

    # -- state machine ------------------------------------------------------------------------
    def _new_round(self, now: float, app_limited: bool) -> None:
        lost, acked = self._round_lost, self._round_acked
        self.round_count += 1
        self._next_round_delivered = self._delivered
        self._round_lost = self._round_acked = 0
        self.aggregation.new_round(self.btl_bw)
        # In startup the loss of a whole round is judged when it ends (rounds are short there: a few
        # random losses early in one must not end startup); at least 3 packets (BBRv2 asks 8).
        if self.state == STARTUP and self._too_lossy(lost, lost + acked, self._loss_threshold()):
            self._bound_inflight(lost + acked, now)
        if not self.filled_pipe and self.btl_bw > 0 and not app_limited:
            if self.btl_bw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = self.btl_bw
                self._full_bw_count = 0
            else:
                self._full_bw_count += 1
                self.filled_pipe = self._full_bw_count >= FULL_BW_ROUNDS

    def _enter(self, state: str, now: float) -> None:
        self.state = state
        if state == DRAIN:
            self.pacing_gain, self.cwnd_gain = DRAIN_GAIN, STARTUP_GAIN
        elif state == PROBE_BW:
            self._cycle_index = 2  # start cruising; the probe comes in its turn
            self._cycle_stamp = now
            self.pacing_gain, self.cwnd_gain = PROBE_GAINS[self._cycle_index], CWND_GAIN
        elif state == PROBE_RTT:
            self.pacing_gain, self.cwnd_gain = 1.0, 1.0
            self._probe_rtt_done = None
        self._refresh()

    def _update_state(self, now: float) -> None:
        if self.state == STARTUP and self.filled_pipe:
            self._enter(DRAIN, now)
        if self.state == DRAIN and self.bytes_in_flight <= self.bdp():
            self._enter(PROBE_BW, now)
        elif self.state == PROBE_BW and now - self._cycle_stamp > self._cycle_time:
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_GAINS)
            self._cycle_stamp = now
            self.pacing_gain = PROBE_GAINS[self._cycle_index]
            self._refresh()
            if self._cycle_index == 0:  # a new probing cycle: loosen the loss bound if it held
                # (BBRv2's Reno coexistence: probe up no sooner than a loss-based flow regrows its window)
                raise_cap = now - self._bound_stamp >= PROBE_UP_INTERVAL
                if not self._high_loss_this_cycle and not math.isinf(self.inflight_hi) and raise_cap:
                    self._bound_stamp = now
                    self.inflight_hi *= 1.25
                    if self.inflight_hi > 4 * self.bdp(CWND_GAIN):
                        self.inflight_hi = math.inf
                self._high_loss_this_cycle = False
        elif self.state == PROBE_RTT:
            # What is sent with 4 packets in flight measures the probe, not the path: those samples must not
            # lower the estimate (200 ms is 10 rounds at 20 ms, the whole bandwidth window), as in Linux.
            self._app_limited_until = max(1, self._delivered + self.bytes_in_flight)
            if self._probe_rtt_done is None and self.bytes_in_flight <= MIN_PACKETS * self._mss:
                self._probe_rtt_done = now + PROBE_RTT_DURATION
            elif self._probe_rtt_done is not None and now >= self._probe_rtt_done:
                self._min_rtt_stamp = now
                self.congestion_window = max(self.congestion_window, self._prior_cwnd)
                self._enter(PROBE_BW if self.filled_pipe else STARTUP, now)

    def _update_cwnd(self, acked: int) -> None:
        if self.state == PROBE_RTT:
            self.congestion_window = MIN_PACKETS * self._mss
            return
        target = self._cwnd_target
        if self.filled_pipe:
            target += self.aggregation.extra
        cwnd = self.congestion_window
        if self.filled_pipe:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self._delivered < K_INITIAL_WINDOW * self._mss:
            cwnd += acked  # grows like slow start while the pipe fills
        # The loss cap bounds what the path holds; ACKs held up on the way (the aggregation estimate) are
        # data the path already delivered, so they come on top of it as they do on top of the target.
        cap = self.inflight_hi + self.aggregation.extra
        if cwnd > cap:
            cwnd = int(cap)
        floor = MIN_PACKETS * self._mss
        self.congestion_window = cwnd if cwnd > floor else floor

    def _round_time(self) -> float:
        """The RTT the window and the gain cycle are made for: the minimum RTT, except that a smoothed RTT
        up to ``HOST_DELAY`` is believed. On a 0.5 ms LAN a daemon's event loop reads its socket every
        few milliseconds and acknowledges a burst at once: the RTT under load is 5-10 ms, so a window of
        2 BDP from the minimum RTT ran dry between bursts (lan-gbit at half of reno's rate) and a probing
        phase of one minimum RTT ended before its effect could be seen. On a WAN path of 10 ms or more
        this is the minimum RTT, so a queue another flow keeps standing does not widen the window."""
        return max(self.min_rtt, min(self._smoothed_rtt, HOST_DELAY))

    def _window(self, gain: float) -> int:
        if self.btl_bw == 0 or math.isinf(self.min_rtt):
            return K_INITIAL_WINDOW * self._mss
        return int(gain * self.btl_bw * self._round_time())

    def _refresh(self) -> None:
        """Recompute what follows from the model (the pacing rate, the window's target, the length of a
        gain-cycle phase): called whenever an input changed, so that an ACK costs a few comparisons."""
        self._cycle_time = self._round_time()
        self._cwnd_target = self._window(self.cwnd_gain) + 3 * self._mss
        self._set_pacing_rate()

    def _set_pacing_rate(self) -> None:
        if self.min_rtt < LAN_RTT:
            # A LAN: the window (sized to what busy hosts make the RTT) is a few milliseconds of data, and
            # timer wake-ups for pacing cost the CPU that bounds the rate there (lan-gbit and the
            # multi-provider rows ran at 0.7-0.8x of unpaced reno). aioquic's own rule takes over.
            self.pacing_rate = None
            return
        if self.btl_bw > 0:
            rate = self.pacing_gain * self.btl_bw
            # Never slower than startup's first window allows, never faster than ever measured x gain.
            if not self.filled_pipe and not math.isinf(self.min_rtt):
                rate = max(rate, STARTUP_GAIN * K_INITIAL_WINDOW * self._mss / self.min_rtt)
            self.pacing_rate = rate


register_congestion_control(NAME, BbrCongestionControl)
