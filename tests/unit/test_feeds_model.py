"""Feeds model: subfeed names as the original hashed them, signed chains, hostile logs, SQLite store."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_p2p.errors import InvalidUriError, UsageError
from kachery_p2p.feeds.access import may_write, parse_access_rules, with_write_access
from kachery_p2p.feeds.names import (
    check_message,
    feed_uri,
    parse_feed_uri,
    subfeed_hash,
    subfeed_uri_name,
)
from kachery_p2p.feeds.signing import ChainVerifier, FeedKey, LogError, sign_message, verify_log
from kachery_p2p.feeds.store import FeedStore


def original_subfeed_hash(name: Any) -> str:
    """The original client's rule (kachery_p2p/_feeds.py, _get_subfeed_hash), restated here."""
    if isinstance(name, str):
        if name.startswith("~"):
            return name[1:]
        return hashlib.sha1(name.encode("utf-8")).hexdigest()
    return hashlib.sha1(json.dumps(name, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


# -- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "main",
        "ünïcode name",
        {"workspace": "default", "recordings": True},
        {"b": [1, 2, {"z": 1, "a": "é"}], "a": None},
        ["job", "3f1c", 7],
    ],
)
def test_subfeed_hash_is_the_originals(name: Any) -> None:
    assert subfeed_hash(name) == original_subfeed_hash(name)


def test_dict_names_hash_to_fixed_values_and_appear_as_tilde_hash() -> None:
    name = {"name": "sortings", "workspace": "default"}
    expected = hashlib.sha1(b'{"name":"sortings","workspace":"default"}').hexdigest()
    assert subfeed_hash(name) == expected
    assert subfeed_uri_name(name) == "~" + expected
    # Key order does not matter; the tilde form names the same subfeed.
    assert subfeed_hash({"workspace": "default", "name": "sortings"}) == expected
    assert subfeed_hash("~" + expected) == expected
    assert subfeed_hash("main") == hashlib.sha1(b"main").hexdigest()


def test_bad_names_are_refused() -> None:
    with pytest.raises(UsageError):
        subfeed_hash("~nothex")
    with pytest.raises(UsageError):
        subfeed_hash(3)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        subfeed_hash("x" * 1001)


def test_feed_uris_round_trip() -> None:
    feed_id = "ab" * 32
    assert parse_feed_uri(feed_uri(feed_id)).subfeed_name is None
    for name in ["main", "with/slash and space", "~" + "c" * 40]:
        parsed = parse_feed_uri(feed_uri(feed_id, name))
        assert (parsed.feed_id, parsed.subfeed_name) == (feed_id, name)
    assert parse_feed_uri(feed_uri(feed_id, {"a": 1})).subfeed_name == "~" + subfeed_hash({"a": 1})
    for bad in ["sha1://abc", "feed://xyz", f"feed://{feed_id}/", f"feed://{feed_id}/~123"]:
        with pytest.raises(InvalidUriError):
            parse_feed_uri(bad)


def test_message_limits() -> None:
    check_message({"a": "x" * 1000})
    with pytest.raises(UsageError, match="at most"):
        check_message({"a": "x" * 40_000})
    with pytest.raises(UsageError, match="JSON object"):
        check_message([1, 2])
    with pytest.raises(UsageError, match="plain JSON"):
        check_message({"a": float("nan")})


# -- signed chains -------------------------------------------------------------------------------------

SUB = subfeed_hash("main")


def make_log(key: FeedKey, n: int, sub: str = SUB) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = []
    previous = None
    for i in range(n):
        signed = sign_message(key, sub, i, previous, {"i": i, "text": f"message {i}"}, 1_700_000_000_000 + i)
        previous = signed["signature"]
        log.append(signed)
    return log


def roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_a_good_log_verifies_after_a_json_round_trip() -> None:
    key = FeedKey.generate()
    log = roundtrip(make_log(key, 5))
    assert verify_log(key.feed_id, SUB, log) == 5
    assert log[0]["body"].get("previousSignature") is None
    assert log[3]["body"]["previousSignature"] == log[2]["signature"]
    assert len(key.feed_id) == 64 and len(log[0]["signature"]) == 128


def failure(key: FeedKey, log: list[Any], sub: str = SUB) -> tuple[int, str]:
    verifier = ChainVerifier(key.feed_id, sub)
    for signed in log:
        try:
            verifier.accept(signed)
        except LogError as exc:
            return verifier.count, exc.kind
    raise AssertionError("the log verified")


def test_forged_messages_are_refused() -> None:
    key, other = FeedKey.generate(), FeedKey.generate()
    log = roundtrip(make_log(key, 4))
    tampered = roundtrip(log)
    tampered[2]["body"]["message"]["text"] = "changed"
    assert failure(key, tampered) == (2, "forged")
    # Signed by another key, chained correctly otherwise.
    impostor = sign_message(other, SUB, 2, log[1]["signature"], {"i": 2}, 1)
    assert failure(key, [*log[:2], impostor]) == (2, "forged")
    # A whole valid log of another subfeed replayed here.
    assert failure(key, make_log(key, 2, subfeed_hash("other"))) == (0, "forged")


def test_reordered_and_truncated_logs_are_refused() -> None:
    key = FeedKey.generate()
    log = make_log(key, 5)
    assert failure(key, [log[0], log[2], log[1]]) == (1, "reordered")  # #2 where #1 belongs
    assert failure(key, [log[0], log[1], log[2], log[1]]) == (3, "reordered")
    assert failure(key, [log[1]]) == (0, "reordered")  # a log whose start is missing
    # Same number, but chained to a different predecessor (a fork by someone holding the key is still caught).
    fork = sign_message(key, SUB, 2, log[0]["signature"], {"fork": True}, 1)
    assert failure(key, [*log[:2], fork]) == (2, "reordered")
    assert verify_log(key.feed_id, SUB, [log[0], log[1], log[3]]) == 2


def test_malformed_messages_are_refused() -> None:
    key = FeedKey.generate()
    good = make_log(key, 1)[0]
    for bad in [None, [], {"body": good["body"]}, {**good, "extra": 1}, {"body": {**good["body"], "x": 1},
                "signature": good["signature"]}, {"body": good["body"], "signature": "zz" * 64}]:
        assert failure(key, [bad])[1] == "malformed"


# -- store ----------------------------------------------------------------------------------------------


def test_store_keeps_feeds_messages_and_rules(tmp_path: Path) -> None:
    store = FeedStore(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "feeds.db").st_mode) == 0o600
    key = store.create_feed("mine")
    assert store.feed_id_for_name("mine") == key.feed_id
    loaded = store.feed_key(key.feed_id)
    assert loaded is not None and loaded.feed_id == key.feed_id
    log = make_log(key, 3)
    store.append(key.feed_id, SUB, 0, log)
    store.set_access_rules(key.feed_id, SUB, with_write_access(None, "cd" * 32, True))
    store.close()

    store = FeedStore(tmp_path)
    verifier, size = store.open_log(key.feed_id, SUB)
    assert (verifier.count, verifier.last_signature) == (3, log[2]["signature"]) and size > 0
    assert [json.loads(t) for t in store.read_texts(key.feed_id, SUB, 1, 10)] == roundtrip(log[1:])
    assert may_write(store.access_rules(key.feed_id, SUB), "cd" * 32)
    other = "ef" * 32
    store.add_remote_feed(other)
    assert store.has_feed(other) and store.feed_key(other) is None
    [entry] = [f for f in store.list_feeds() if f["feedId"] == key.feed_id]
    assert entry["names"] == ["mine"] and entry["writeable"] and entry["subfeeds"][0]["numMessages"] == 3
    assert store.delete_feed(key.feed_id) and not store.has_feed(key.feed_id)
    assert store.read_texts(key.feed_id, SUB, 0, 10) == []
    store.close()


def test_a_tampered_database_row_ends_the_verified_log(tmp_path: Path) -> None:
    store = FeedStore(tmp_path)
    key = store.create_feed()
    store.append(key.feed_id, SUB, 0, make_log(key, 4))
    store.close()
    db = sqlite3.connect(tmp_path / "feeds.db")
    text = db.execute("SELECT signed FROM messages WHERE number = 2").fetchone()[0]
    db.execute("UPDATE messages SET signed = ? WHERE number = 2", (text.replace("message 2", "message X"),))
    db.commit()
    db.close()
    store = FeedStore(tmp_path)
    assert store.open_log(key.feed_id, SUB)[0].count == 2
    store.close()


def test_database_open_to_others_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "feeds.db").touch(mode=0o644)
    os.chmod(tmp_path / "feeds.db", 0o644)
    FeedStore(tmp_path).close()
    assert stat.S_IMODE(os.stat(tmp_path / "feeds.db").st_mode) == 0o600


def test_access_rules_are_validated() -> None:
    rules = parse_access_rules({"rules": [{"nodeId": "ab" * 32, "write": True}]})
    assert may_write(rules, "ab" * 32) and not may_write(rules, "cd" * 32) and not may_write(None, "ab" * 32)
    assert not may_write(with_write_access(rules, "ab" * 32, False), "ab" * 32)
    for bad in [None, {"rules": "x"}, {"rules": [{"nodeId": "short"}]}, {"rules": [{"nodeId": "ab" * 32, "write": 1}]}]:
        with pytest.raises(UsageError):
            parse_access_rules(bad)


_KEY = FeedKey.generate()
_LOG = make_log(_KEY, 6)


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(6)), st.integers(min_value=0, max_value=6))
def test_any_reordering_or_truncation_keeps_exactly_the_in_order_prefix(order: list[int], cut: int) -> None:
    log = [_LOG[i] for i in order][:cut]
    in_order = next((i for i, n in enumerate(order[:cut]) if n != i), cut)
    assert verify_log(_KEY.feed_id, SUB, log) == in_order


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=5), st.text(min_size=1, max_size=5))
def test_any_edit_of_a_message_is_forged(index: int, text: str) -> None:
    log = roundtrip(_LOG)
    log[index]["body"]["message"]["text"] += text
    assert verify_log(_KEY.feed_id, SUB, log) == index
