"""Hole-punch attempts (nat.punch) and path choice (peering.path), in memory with a simulated clock."""

from __future__ import annotations

from kachery_p2p.nat.punch import LINGER, PROBE_INTERVAL, PunchAttempt, PunchResult
from kachery_p2p.peering.path import DIRECT_TIMEOUT, RELAY_HINT, PathSelector
from kachery_p2p.relay.frames import decode_probe

A, B = "a" * 64, "b" * 64
TOKEN = bytes(range(16))
A_ADDR, B_ADDR, B_NAT = ("10.0.0.1", 1000), ("10.0.0.2", 2000), ("203.0.113.9", 40000)
RELAY = ("198.51.100.1", 3478)


def deliver(sender: PunchAttempt, receiver: PunchAttempt, src: object, now: float, blocked: set[object]) -> int:
    """Send what ``sender`` wants to send; datagrams to ``receiver``'s addresses arrive from ``src``."""
    count = 0
    for data, dst in sender.datagrams_to_send(now):
        if dst in blocked:
            continue
        receiver.receive_probe(decode_probe(data), src, now)  # type: ignore[arg-type]
        count += 1
    return count


def test_both_sides_confirm_the_path_through_a_nat_rewriting_the_port() -> None:
    a = PunchAttempt(TOKEN, A, B, [B_ADDR], now=0.0)  # B's advertised address is not where it appears
    b = PunchAttempt(TOKEN, B, A, [A_ADDR], now=0.0)
    now = 0.0
    while now < 1.0 and not (a.result and b.result):
        deliver(b, a, B_NAT, now, blocked=set())  # b's probes reach a from the NAT's port
        deliver(a, b, A_ADDR, now, blocked={B_ADDR})  # a's probes to the advertised address are lost
        now += PROBE_INTERVAL
    assert a.next_event() == PunchResult(B_NAT, confirmed=True)
    assert b.next_event() == PunchResult(A_ADDR, confirmed=True)
    assert B_NAT in a.targets  # learned peer-reflexive address


def test_a_one_way_path_is_reported_unconfirmed_at_the_deadline() -> None:
    a = PunchAttempt(TOKEN, A, B, [B_ADDR], now=0.0, duration=1.0)
    b = PunchAttempt(TOKEN, B, A, [A_ADDR], now=0.0, duration=1.0)
    now = 0.0
    while (timer := a.get_timer()) is not None and timer <= 1.0:
        now = timer
        a.handle_timer(now)
        deliver(b, a, B_ADDR, now, blocked=set())
        deliver(a, b, A_ADDR, now, blocked={B_ADDR})  # nothing of a's reaches b, acks included
    assert a.result == PunchResult(B_ADDR, confirmed=False)
    assert a.next_event() == a.result


def test_probes_from_strangers_or_other_tokens_are_ignored_and_probing_stops() -> None:
    a = PunchAttempt(TOKEN, A, B, [B_ADDR], now=0.0, duration=2.0)
    b_wrong_token = PunchAttempt(bytes(16), B, A, [A_ADDR], now=0.0)
    stranger = PunchAttempt(TOKEN, "c" * 64, A, [A_ADDR], now=0.0)
    deliver(b_wrong_token, a, B_ADDR, 0.0, set())
    deliver(stranger, a, B_ADDR, 0.0, set())
    assert a.first_seen is None and a.stats["probes_received"] == 0
    a.handle_timer(2.0)
    assert a.next_event() == PunchResult(None, confirmed=False)
    assert a.datagrams_to_send(2.0) == [] and a.get_timer() is None and a.finished(2.0 + LINGER + 0.1)


def test_a_relayed_connection_moves_direct_and_counts_bytes_per_path() -> None:
    path = PathSelector(relay=RELAY)
    assert path.kind == "relayed" and path.destination == RELAY
    assert path.datagram_sent(1200, now=0.0) == "relayed"
    path.datagram_received("relayed", RELAY, 1200, now=0.01)
    assert path.direct_found(B_NAT, now=0.5)
    assert path.datagram_sent(1200, now=0.6) == "direct" and path.destination == B_NAT
    path.datagram_received("direct", ("192.0.2.66", 1), 1200, now=0.61)  # a stranger: no evidence
    assert path.get_timer() == 0.6 + DIRECT_TIMEOUT
    path.datagram_received("direct", B_NAT, 1200, now=0.62)
    assert path.get_timer() is None
    assert path.bytes == {"direct": {"sent": 1200, "received": 1200}, "relayed": {"sent": 1200, "received": 1200}}


def test_a_direct_path_that_stops_answering_falls_back_to_the_relay() -> None:
    path = PathSelector(relay=RELAY)
    path.direct_found(B_NAT, now=0.0)
    path.datagram_sent(1200, now=1.0)  # cut from here on: nothing comes back
    path.datagram_sent(1200, now=1.0 + DIRECT_TIMEOUT / 2)
    assert path.kind == "direct"
    path.handle_timer(1.0 + DIRECT_TIMEOUT + 0.01)
    assert path.kind == "relayed" and path.destination == RELAY
    assert path.moves[-1][0] == "relayed"


def test_an_idle_direct_path_stays_direct_after_datagrams_that_need_no_answer() -> None:
    """Before: the last ACK of a load started the no-answer clock, so 1.5 s of silence (or the next datagram
    5 s later) moved a working direct path to the relay (every soak load in the NAT lab went relayed)."""
    path = PathSelector(relay=RELAY)
    path.direct_found(B_NAT, now=0.0)
    for now in (1.0, 1.001, 1.01):  # the final ACKs of a transfer, then silence
        path.datagram_sent(40, now=now)
    timer = path.get_timer()
    assert timer is not None
    path.handle_timer(timer + 0.01)
    assert path.kind == "direct" and path.get_timer() is None
    path.datagram_sent(40, now=6.0)
    assert path.kind == "direct" and path.moves == [("direct", "hole punch confirmed")]
    path.datagram_sent(1200, now=6.0 + DIRECT_TIMEOUT / 2)  # still sending, still no answer: the path is dead
    path.handle_timer(6.0 + DIRECT_TIMEOUT + 0.01)
    assert path.kind == "relayed"


def test_the_peer_moving_to_the_relay_moves_us_too_but_late_relayed_packets_do_not() -> None:
    path = PathSelector(relay=RELAY)
    path.direct_found(B_NAT, now=0.0)
    path.datagram_sent(100, now=0.0)
    path.datagram_received("relayed", RELAY, 100, now=0.05)  # sent before the peer moved: stays
    assert path.kind == "direct"
    path.datagram_received("direct", B_NAT, 100, now=0.1)
    path.datagram_sent(100, now=1.0)
    path.datagram_received("relayed", RELAY, 100, now=1.0 + RELAY_HINT + 0.01)
    assert path.kind == "relayed"


def test_a_direct_only_connection_never_falls_back() -> None:
    path = PathSelector(direct=B_ADDR)
    path.datagram_sent(100, now=0.0)
    path.handle_timer(100.0)
    assert path.kind == "direct" and path.get_timer() is None
