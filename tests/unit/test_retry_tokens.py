"""quic.retry, sans-IO: Retry tokens bound to the address, the connection id and a lifetime; and
when the endpoint requires them (issue 10 #1)."""

from __future__ import annotations

from kachery_p2p.quic.retry import HOLD_SEC, TOKEN_LIFETIME, RetryPolicy, RetryTokens

ADDR = ("203.0.113.5", 4433)
ODCID = bytes(range(8))
RCID = bytes(range(8, 16))


def test_a_token_is_good_only_for_its_address_connection_id_and_lifetime() -> None:
    tokens = RetryTokens()
    token = tokens.mint(ADDR, ODCID, RCID, now=100.0)
    assert tokens.check(token, ADDR, RCID, now=100.0 + TOKEN_LIFETIME - 0.01) == ODCID
    assert tokens.check(token, ADDR, RCID, now=100.0 + TOKEN_LIFETIME + 0.01) is None  # expired
    assert tokens.check(token, ("203.0.113.5", 4434), RCID, now=100.0) is None  # other port
    assert tokens.check(token, ("203.0.113.6", 4433), RCID, now=100.0) is None  # other host
    assert tokens.check(token, ADDR, ODCID, now=100.0) is None  # other connection id
    assert tokens.check(token, ADDR, RCID, now=50.0) is None  # issued in the future
    assert RetryTokens().check(token, ADDR, RCID, now=100.0) is None  # another process's secret
    for index in range(len(token)):  # any changed byte
        bad = bytearray(token)
        bad[index] ^= 1
        assert tokens.check(bytes(bad), ADDR, RCID, now=100.0) is None
    for junk in (b"", b"\x01", token[:-1], token + b"\x00", bytes(64)):
        assert tokens.check(junk, ADDR, RCID, now=100.0) is None
    v6 = ("2001:db8::1", 443)
    assert tokens.check(tokens.mint(v6, ODCID, RCID, 1.0), v6, RCID, 1.0) == ODCID


def test_retry_is_required_under_load_for_a_while_and_per_source() -> None:
    policy = RetryPolicy(max_half_open=256, max_half_open_per_source=8)
    assert not policy.require_retry(10, 0, now=0.0)  # quiet: no extra round trip
    assert policy.require_retry(10, 4, now=0.0)  # one source with half its share
    assert not policy.require_retry(63, 3, now=1.0)
    assert policy.require_retry(64, 0, now=2.0)  # a quarter of the table
    assert policy.require_retry(1, 0, now=2.0 + HOLD_SEC - 0.1)  # still under load for a while
    assert not policy.require_retry(1, 0, now=2.0 + HOLD_SEC + 0.1)
