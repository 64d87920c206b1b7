"""The model-based controller (quic/bbr.py) on a simulated bottleneck (quic/simlink.py): real aioquic
connections, simulated clock, seeded loss. A 10 Mbit/s path keeps the tests quick; the dynamics are the
same as at 100 Mbit/s with a BDP ten times smaller (``python -m bench cc-sim`` runs the full-size table).
"""

from __future__ import annotations

import pytest

from kachery_p2p.quic import ack_aggregation, bbr
from kachery_p2p.quic.bbr import NAME, PROBE_BW, PROBE_RTT, BbrCongestionControl
from kachery_p2p.quic.simlink import Flow, make_net, run_shared, run_transfer

RATE = 10e6
RTT = 0.04
BDP = int(RATE / 8 * RTT)  # 50 kB: the simulated queue holds one BDP


def controller(flow: Flow) -> BbrCongestionControl:
    cc = flow.client._loss._cc
    assert isinstance(cc, BbrCongestionControl)
    return cc


def test_startup_finds_the_bottleneck_rate_within_a_bounded_number_of_round_trips_then_keeps_the_queue_short() -> None:
    net = make_net(RATE, RTT, 0.0)
    flow = Flow(NAME, None, 4, 1350, 0)
    net.add(flow)
    while flow.started is None:
        net.step(5.0)
    started = net.now
    cc = controller(flow)
    while cc.btl_bw < 0.9 * RATE / 8:
        assert net.step(started + 12 * RTT), f"bandwidth estimate {cc.btl_bw * 8 / 1e6:.1f} Mbit/s after 12 RTTs"
    net.run(1.0, until_done=False)
    assert cc.state == PROBE_BW
    # In steady state the queue stays well below the buffer (the 1.25x probe adds a quarter BDP), and the
    # link stays full.
    net.forward.max_queued = 0
    drops = net.forward.dropped_queue
    delivered = flow.delivered
    net.run(2.0, until_done=False)
    assert net.forward.max_queued <= 0.75 * BDP, net.forward.max_queued
    assert net.forward.dropped_queue == drops
    assert (flow.delivered - delivered) * 8 / 2.0 >= 0.9 * RATE


def test_random_loss_does_not_collapse_the_rate_as_it_does_renos() -> None:
    ours = run_transfer(NAME, RTT, 0.02, size=2_000_000, rate_bps=RATE)
    reno = run_transfer("reno", RTT, 0.02, size=2_000_000, rate_bps=RATE)
    assert ours.goodput_bps >= 0.75 * RATE
    assert ours.goodput_bps > 1.5 * reno.goodput_bps


def test_it_shares_the_link_with_a_loss_based_flow() -> None:
    # Measured (8 s): against cubic about 0.5 / 0.45 of the link, against reno 0.64 / 0.33 (reno at the
    # issue's one-third line; a full-size run: python -m bench cc-sim).
    for other, least in (("cubic", 1 / 3), ("reno", 0.3)):
        ours, theirs = run_shared([NAME, other], RTT, seconds=6.0, rate_bps=RATE)
        total = ours.goodput_bps + theirs.goodput_bps
        assert total >= 0.85 * RATE
        assert min(ours.goodput_bps, theirs.goodput_bps) >= least * RATE, (other, ours.goodput_bps, theirs.goodput_bps)


def test_a_connection_that_chatted_before_the_bulk_still_finds_the_bottleneck_rate() -> None:
    """A daemon's connection carries small messages for several round trips before a download (the
    session's authentication, channel joins, the provider search). Before: startup took those rounds as
    "the bandwidth stopped growing" and ended with a 20 kB/s estimate; the bulk then crept up by 1.25x per
    8 round trips (0.74 MB/s on the 100 Mbit/s, 80 ms lab path, the in-flight cap at any RTT)."""
    net = make_net(RATE, RTT, 0.0)
    flow = Flow(NAME, None, 4, 1350, 0, chatter=12)
    net.add(flow)
    while flow.started is None:
        assert net.step(10.0)
    started = net.now
    cc = controller(flow)
    while cc.btl_bw < 0.9 * RATE / 8:
        assert net.step(started + 12 * RTT), f"bandwidth estimate {cc.btl_bw * 8 / 1e6:.2f} Mbit/s after 12 RTTs"


def test_a_lan_whose_receiver_acknowledges_in_bursts_stays_full() -> None:
    """A gigabit LAN has a 0.5 ms RTT, but a busy daemon reads its socket every few milliseconds and then
    acknowledges everything at once. Before: the window (2 BDP from the 0.5 ms minimum RTT) emptied long
    before the next burst of ACKs; lan-gbit ran at half of reno's rate."""
    rate, rtt = 100e6, 0.0005
    net = make_net(rate, rtt, 0.0, queue_bytes=256 * 1024)
    flow = Flow(NAME, None, 4, 1350, 0)
    net.add(flow)
    while flow.started is None:
        assert net.step(5.0)
    net.run(0.2, until_done=False)  # the minimum RTT is the wire's, measured before the load
    net.forward.wake_every = net.reverse.wake_every = 0.004  # then the hosts get busy
    net.run(1.0, until_done=False)
    delivered, started = flow.delivered, net.now
    net.run(1.0, until_done=False)
    assert (flow.delivered - delivered) * 8 / (net.now - started) >= 0.8 * rate
    # and it does not pace there: on a LAN the window is a few ms of data and timers only cost CPU
    assert controller(flow).pacing_rate is None


def test_random_loss_on_a_lan_with_busy_hosts_does_not_hold_the_rate_down() -> None:
    """1 % random loss on a 0.5 ms LAN whose hosts acknowledge in 4 ms bursts. Before: in rounds of a few
    packets any loss was a large fraction, and host delays looked like a standing queue, so the loss cap held
    the window at a few packets (bench shaped-load with 1 % loss: 4-5 MB/s of 12.5, reno 10)."""
    rate = 100e6
    net = make_net(rate, 0.0005, 0.01, queue_bytes=256 * 1024)
    flow = Flow(NAME, None, 4, 1350, 0)
    net.add(flow)
    while flow.started is None:
        assert net.step(5.0)
    net.run(0.2, until_done=False)
    net.forward.wake_every = net.reverse.wake_every = 0.004
    net.run(1.0, until_done=False)
    delivered, started = flow.delivered, net.now
    net.run(2.0, until_done=False)
    assert (flow.delivered - delivered) * 8 / (net.now - started) >= 0.7 * rate


def test_probe_rtt_does_not_throw_the_bandwidth_estimate_away(monkeypatch: pytest.MonkeyPatch) -> None:
    # PROBE_RTT keeps 4 packets in flight for 200 ms: at 10 ms that is 20 rounds, twice the bandwidth
    # window. Its samples measure the probe, not the path; before they were ignored, the estimate fell to
    # the probe's rate (5.4 -> 0.26 MB/s at 100 Mbit/s / 20 ms in the sim) and took a second to regrow.
    monkeypatch.setattr(bbr, "MIN_RTT_WINDOW", 1.5)  # probe after 1.5 s instead of 10 s
    net = make_net(RATE, 0.01, 0.0)
    flow = Flow(NAME, None, 4, 1350, 0)
    net.add(flow)
    cc = controller(flow)
    while cc.state != PROBE_RTT:
        assert net.step(5.0), "no PROBE_RTT within 5 s"
    before = cc.btl_bw
    assert before >= 0.9 * RATE / 8
    lowest = before
    while cc.state == PROBE_RTT:
        assert net.step(net.now + 1.0)
        lowest = min(lowest, cc.btl_bw)
    ends = net.now
    while net.now < ends + 0.1:
        net.step(ends + 0.1)
        lowest = min(lowest, cc.btl_bw)
    assert lowest >= 0.8 * before, f"estimate {before * 8 / 1e6:.1f} -> {lowest * 8 / 1e6:.1f} Mbit/s"


def test_a_wan_path_whose_hosts_acknowledge_in_bursts_stays_full() -> None:
    """A 40 ms path whose hosts read their sockets every 15 ms (a daemon busy sending, or a user-space delay
    line): ACKs come in bursts, so for a while more is in flight than bandwidth x RTT explains. The window
    carries that excess (Linux BBR's ACK-aggregation estimate), on top of the loss cap too. Before: 0.94 of
    the link here, and in the WAN lab the window held a busy daemon at 0.7-0.8 of a 100 Mbit/s, 20 ms path."""
    net = make_net(RATE, RTT, 0.0)
    flow = Flow(NAME, None, 4, 1350, 0)
    net.add(flow)
    while flow.started is None:
        assert net.step(5.0)
    net.run(0.5, until_done=False)
    net.forward.wake_every = net.reverse.wake_every = 0.015
    net.run(1.5, until_done=False)
    delivered, started = flow.delivered, net.now
    net.run(3.0, until_done=False)
    assert (flow.delivered - delivered) * 8 / (net.now - started) >= 0.96 * RATE
    cc = controller(flow)
    assert 0 < cc.aggregation.extra <= cc.btl_bw * ack_aggregation.MAX_SECONDS


def test_an_ack_of_many_packets_is_taken_together_with_the_same_accounting() -> None:
    """The fast path hands kachery-bbr all the packets of one ACK frame in one call (one rate sample, one
    model update per ACK, as Linux BBR); aioquic hands them one at a time. The bytes in flight, the bytes
    delivered and the round count must come out the same either way, the window within one ACK's bytes."""
    from aioquic.quic.packet import QuicPacketType
    from aioquic.quic.packet_builder import QuicSentPacket
    from aioquic.tls import Epoch

    def flight(cc: BbrCongestionControl, start: int, count: int, at: float) -> list[QuicSentPacket]:
        packets = []
        for n in range(start, start + count):
            packet = QuicSentPacket(Epoch.ONE_RTT, True, True, True, n, QuicPacketType.ONE_RTT, sent_bytes=1200)
            packet.sent_time = at + n * 1e-4
            cc.on_packet_sent(packet=packet)
            packets.append(packet)
        return packets

    one_by_one, together = BbrCongestionControl(max_datagram_size=1200), BbrCongestionControl(max_datagram_size=1200)
    now = 0.0
    for round_trip in range(6):
        batch_a = flight(one_by_one, round_trip * 10, 10, now)
        batch_b = flight(together, round_trip * 10, 10, now)
        now += 0.05
        for packet in batch_a:
            one_by_one.on_packet_acked(now=now, packet=packet)
        together.on_packets_acked(now, batch_b)
        for cc in (one_by_one, together):
            cc.on_rtt_measurement(now=now, rtt=0.05)
        assert together.bytes_in_flight == one_by_one.bytes_in_flight == 0
        assert together._delivered == one_by_one._delivered
        assert together.round_count == one_by_one.round_count
        # the window grows per ACK rather than per packet: at most one ACK's bytes apart, as in Linux
        assert abs(together.congestion_window - one_by_one.congestion_window) <= 10 * 1200
    assert together.btl_bw > 0 and not together._sent
