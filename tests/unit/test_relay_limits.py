"""Relay limits: token bucket arithmetic on a fake clock, byte quota, peer cap and idle forgetting."""

from __future__ import annotations

import math

import pytest

from kachery_p2p.errors import ConfigError
from kachery_p2p.relay.limits import (
    BYTE_QUOTA,
    RATE_LIMIT,
    TOO_MANY_PEERS,
    ForwardingPolicy,
    RelayLimits,
    TokenBucket,
)

T0 = 1000.0
A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def test_bucket_starts_full_and_refills() -> None:
    bucket = TokenBucket(rate=100.0, burst=500.0)
    assert bucket.allow(500, T0)
    assert not bucket.allow(1, T0)
    assert not bucket.allow(60, T0 + 0.5)  # 50 tokens back, a refusal takes none
    assert bucket.allow(50, T0 + 0.5)
    assert bucket.tokens(T0 + 0.5) == pytest.approx(0.0)
    assert bucket.tokens(T0 + 2.5) == pytest.approx(200.0)
    assert bucket.tokens(T0 + 100) == pytest.approx(500.0)  # capped at burst


def test_bucket_never_allows_more_than_burst() -> None:
    bucket = TokenBucket(rate=1e9, burst=100.0)
    assert not bucket.allow(101, T0 + 1000)


def test_bucket_clock_stepping_back() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0)
    assert bucket.allow(100, T0)
    assert not bucket.allow(10, T0 - 50)  # no tokens from going back
    assert bucket.allow(10, T0 + 1)  # measured from the latest time seen
    assert not bucket.allow(1, T0 + 1)


def test_bucket_long_run_rate() -> None:
    bucket = TokenBucket(rate=1000.0, burst=1000.0)
    sent = 0
    now = T0
    for _ in range(10_000):
        now += 0.001
        if bucket.allow(100, now):
            sent += 100
    # 10 s at 1000 B/s, plus the initial burst
    assert 10_000 <= sent <= 11_000


def test_bucket_unlimited_and_validation() -> None:
    assert TokenBucket(math.inf, 0).allow(10**9, T0)
    for rate, burst in ((-1.0, 1.0), (1.0, -1.0), (math.nan, 1.0), (1.0, math.inf)):
        with pytest.raises(ValueError):
            TokenBucket(rate, burst)
    with pytest.raises(ValueError):
        TokenBucket(1.0, 1.0).allow(-1, T0)


def test_limits_defaults_and_validation() -> None:
    limits = RelayLimits()
    assert limits.max_registrations == 1000
    assert limits.max_bytes_per_node == 50 * 2**30
    assert limits.max_peers_per_node == 32
    for bad in (
        {"max_registrations": 0},
        {"bytes_per_sec_per_node": 0},
        {"burst_bytes": 100},
        {"max_peers_per_node": 0},
        {"peer_idle_sec": -1},
        {"max_bytes_per_node": -1},
    ):
        with pytest.raises(ConfigError):
            RelayLimits(**bad)


def test_rate_limit() -> None:
    policy = ForwardingPolicy(RelayLimits(bytes_per_sec_per_node=10_000, burst_bytes=4_000))
    assert policy.decide(A, B, 4_000, T0) == (True, "")
    assert policy.decide(A, B, 1_000, T0) == (False, RATE_LIMIT)
    assert policy.decide(C, B, 1_000, T0) == (True, "")  # per source
    assert policy.decide(A, B, 1_000, T0 + 0.1) == (True, "")
    stats = policy.stats(A)
    assert stats["bytes"] == 5_000
    assert stats["frames"] == 2
    assert stats["refused"] == {RATE_LIMIT: 1}


def test_byte_quota() -> None:
    policy = ForwardingPolicy(RelayLimits(max_bytes_per_node=3_000, burst_bytes=1e6))
    assert policy.decide(A, B, 2_000, T0)[0]
    assert policy.decide(A, B, 1_001, T0) == (False, BYTE_QUOTA)
    assert policy.decide(A, B, 1_000, T0)[0]
    assert policy.decide(A, B, 1, T0 + 3600) == (False, BYTE_QUOTA)  # time does not restore a quota
    assert policy.stats(A)["bytes_left"] == 0
    policy.end_session(A)  # a new session starts afresh
    assert policy.decide(A, B, 1_000, T0 + 3600)[0]


def test_max_peers_and_idle_forgetting() -> None:
    policy = ForwardingPolicy(RelayLimits(max_peers_per_node=2, peer_idle_sec=120))
    assert policy.decide(A, B, 100, T0)[0]
    assert policy.decide(A, C, 100, T0 + 60)[0]
    assert policy.decide(A, D, 100, T0 + 60) == (False, TOO_MANY_PEERS)
    assert policy.decide(A, B, 100, T0 + 60)[0]  # a known peer is fine
    assert policy.decide(A, C, 100, T0 + 100)[0]
    assert policy.stats(A)["peers"] == 2
    assert policy.decide(A, D, 100, T0 + 181) == (True, "")  # B idle since T0+60 > 120 s
    assert policy.decide(A, B, 100, T0 + 181) == (False, TOO_MANY_PEERS)
    assert policy.stats(A)["refused"] == {TOO_MANY_PEERS: 2}
    policy.forget_idle(T0 + 1000)
    assert policy.stats(A)["peers"] == 0


def test_refused_frame_costs_nothing() -> None:
    policy = ForwardingPolicy(RelayLimits(max_peers_per_node=1, burst_bytes=2_048, bytes_per_sec_per_node=1))
    assert policy.decide(A, B, 2_000, T0)[0]
    assert policy.decide(A, C, 48, T0) == (False, TOO_MANY_PEERS)
    assert policy.decide(A, B, 48, T0) == (True, "")  # the tokens are still there


def test_totals_and_unknown_node() -> None:
    policy = ForwardingPolicy()
    assert policy.stats(A) == {"bytes": 0, "frames": 0, "peers": 0, "bytes_left": 50 * 2**30, "refused": {}}
    policy.decide(A, B, 10, T0)
    policy.decide(B, A, 20, T0)
    assert policy.stats() == {"nodes": 2, "bytes": 30, "frames": 2, "refused": {}}
