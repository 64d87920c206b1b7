"""The connect policy (peering.policy), in memory with a simulated clock."""

from __future__ import annotations

from kachery_p2p.peering.policy import (
    LAN_STEP_IN_AFTER,
    RELAY_STEP_IN_AFTER,
    RETRY_DIRECT_SEC,
    Backoff,
    ConnectPolicy,
    ConnectViaRelay,
    DialLan,
    dials_first,
    keepalive_due,
    session_rank,
)

SMALL, BIG = "1" * 64, "f" * 64


def drain(policy: ConnectPolicy) -> list[object]:
    found = []
    while (event := policy.next_event()) is not None:
        found.append(event)
    return found


def test_the_smaller_id_connects_at_once_relayed_and_punching() -> None:
    policy = ConnectPolicy(SMALL)
    policy.relay_peer_seen(BIG, now=0.0)
    assert drain(policy) == [ConnectViaRelay(BIG, relayed=True, punch=True)]
    policy.relay_peer_seen(BIG, now=0.1)  # an attempt is under way: nothing more
    assert drain(policy) == [] and BIG in policy.connecting
    policy.attempt_done(BIG, now=1.0)
    assert not policy.connecting


def test_a_peer_with_a_session_is_punched_again_by_timer_until_the_session_ends() -> None:
    policy = ConnectPolicy(SMALL, retry_direct=5.0)
    policy.relay_peer_seen(BIG, now=0.0)
    drain(policy)
    policy.session_changed(BIG, "relayed")
    policy.attempt_done(BIG, now=1.0)
    assert policy.get_timer() == 6.0
    policy.handle_timer(6.0)
    assert drain(policy) == [ConnectViaRelay(BIG, relayed=False, punch=True)]
    policy.attempt_done(BIG, now=7.0)
    policy.session_changed(BIG, None)  # gone: the retry does nothing
    policy.handle_timer(12.0)
    assert drain(policy) == [] and policy.get_timer() is None


def test_the_bigger_id_steps_in_only_if_nothing_connected() -> None:
    policy = ConnectPolicy(BIG)
    policy.relay_peer_seen(SMALL, now=10.0)
    assert drain(policy) == [] and policy.get_timer() == 10.0 + RELAY_STEP_IN_AFTER
    assert SMALL in policy.connecting  # a search waits for it
    policy.handle_timer(10.0 + RELAY_STEP_IN_AFTER)
    assert drain(policy) == [ConnectViaRelay(SMALL, relayed=True, punch=True)]

    other = ConnectPolicy(BIG)
    other.relay_peer_seen(SMALL, now=0.0)
    other.session_changed(SMALL, "relayed")  # the smaller id connected meanwhile
    other.handle_timer(RELAY_STEP_IN_AFTER)
    assert drain(other) == [] and other.get_timer() is None and not other.connecting


def test_a_relayed_peer_is_punched_again_after_the_retry_interval() -> None:
    policy = ConnectPolicy(SMALL)
    policy.session_changed(BIG, "relayed")
    policy.relay_peer_seen(BIG, now=0.0)
    assert drain(policy) == [ConnectViaRelay(BIG, relayed=False, punch=True)]
    policy.attempt_done(BIG, now=0.0)
    policy.relay_peer_seen(BIG, now=RETRY_DIRECT_SEC - 1)
    assert drain(policy) == []
    policy.relay_peer_seen(BIG, now=RETRY_DIRECT_SEC + 1)
    assert drain(policy) == [ConnectViaRelay(BIG, relayed=False, punch=True)]
    policy.attempt_done(BIG, now=RETRY_DIRECT_SEC + 1)
    policy.session_changed(BIG, "direct")
    policy.relay_peer_seen(BIG, now=10 * RETRY_DIRECT_SEC)
    assert drain(policy) == []


def test_without_hole_punching_a_relayed_peer_stays_relayed() -> None:
    policy = ConnectPolicy(SMALL, hole_punching=False)
    policy.relay_peer_seen(BIG, now=0.0)
    assert drain(policy) == [ConnectViaRelay(BIG, relayed=True, punch=False)]
    policy.attempt_done(BIG, now=0.0)
    assert policy.get_timer() is None
    policy.session_changed(BIG, "relayed")
    policy.relay_peer_seen(BIG, now=1000.0)
    assert drain(policy) == []


def test_lan_peers_same_rule_longer_step_in() -> None:
    small = ConnectPolicy(SMALL)
    small.lan_peer_seen(BIG, "10.0.0.2", 7000, now=0.0)
    assert drain(small) == [DialLan(BIG, "10.0.0.2", 7000)]
    big = ConnectPolicy(BIG)
    big.lan_peer_seen(SMALL, "10.0.0.1", 7000, now=0.0)
    assert drain(big) == [] and big.get_timer() == LAN_STEP_IN_AFTER
    big.handle_timer(LAN_STEP_IN_AFTER - 0.01)
    assert drain(big) == []
    big.handle_timer(LAN_STEP_IN_AFTER)
    assert drain(big) == [DialLan(SMALL, "10.0.0.1", 7000)]


def test_ranking_backoff_and_keepalive() -> None:
    assert dials_first(SMALL, BIG) and not dials_first(BIG, SMALL)
    ranked = sorted(
        [("relayed", True), ("direct", False), ("direct", True)],
        key=lambda s: session_rank(s[0], s[1], SMALL, BIG),  # type: ignore[arg-type]
    )
    assert ranked == [("direct", True), ("direct", False), ("relayed", True)]
    backoff = Backoff()
    assert [backoff.failed() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.succeeded()
    assert backoff.failed() == 1 and backoff.first_failure
    assert keepalive_due(0.0, 15.1) and not keepalive_due(0.0, 14.9)


def test_which_accepted_sessions_are_kept_after_the_grace() -> None:
    from kachery_p2p.peering.policy import keep_accepted_session

    assert keep_accepted_session(False, shares_channel=True, peer_is_relay=False, registered=False)
    assert keep_accepted_session(False, shares_channel=False, peer_is_relay=True, registered=False)
    assert not keep_accepted_session(False, shares_channel=False, peer_is_relay=False, registered=False)
    assert keep_accepted_session(True, shares_channel=False, peer_is_relay=False, registered=True)
    assert not keep_accepted_session(True, shares_channel=True, peer_is_relay=False, registered=False)
