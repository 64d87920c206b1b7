"""Subfeed names, hashes and feed URIs, exactly as the original kachery-p2p computed them.

A subfeed is named by
  * a string: its hash is sha1 of the UTF-8 name, unless it starts with ``~``, when the rest *is* the hash;
  * a dict or list: its hash is sha1 of ``json.dumps(name, sort_keys=True, separators=(",", ":"))`` and its
    name in URIs is ``~<hash>``.

URIs: ``feed://<feedId>`` and ``feed://<feedId>/<quoted subfeed name>``. A snapshot (a feed stored as a
kachery file) is ``sha1://<hash>/feed.json`` and its subfeeds ``sha1://<hash>/feed.json?subfeedName=<quoted>``.

Limits (checked by the daemon on append, submit and replication; documented in README "Feeds"):
  * a message is a JSON object of at most MAX_MESSAGE_BYTES (UTF-8, compact JSON);
  * a submitted message (from another node) is at most MAX_SUBMIT_CHARS characters of JSON, as in the original;
  * a subfeed holds at most MAX_SUBFEED_MESSAGES messages and MAX_SUBFEED_BYTES bytes of signed messages;
  * a feed name is 1-100 characters; a string subfeed name at most MAX_SUBFEED_NAME characters.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from ..errors import InvalidUriError, UsageError

MAX_MESSAGE_BYTES = 32 * 1024
MAX_SUBMIT_CHARS = 10_000
MAX_SUBFEED_MESSAGES = 1_000_000
MAX_SUBFEED_BYTES = 256 * 1024 * 1024
MAX_FEED_NAME = 100
MAX_SUBFEED_NAME = 1000

_HEX40 = re.compile(r"^[0-9a-f]{40}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")

SubfeedName = str | dict[str, Any] | list[Any]


def is_feed_id(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX64.match(value))


def is_subfeed_hash(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX40.match(value))


def check_feed_id(value: object) -> str:
    if not is_feed_id(value):
        raise UsageError(f"bad feed id {str(value)[:80]!r}: expected 64 lower-case hex digits")
    assert isinstance(value, str)
    return value


def check_subfeed_hash(value: object) -> str:
    if not is_subfeed_hash(value):
        raise UsageError(f"bad subfeed hash {str(value)[:80]!r}: expected 40 lower-case hex digits")
    assert isinstance(value, str)
    return value


def check_feed_name(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_FEED_NAME:
        raise UsageError(f"a feed name must be a string of 1-{MAX_FEED_NAME} characters")
    return value


def subfeed_hash(name: SubfeedName) -> str:
    """The original's rule: see the module docstring."""
    if isinstance(name, str):
        if name.startswith("~"):
            return check_subfeed_hash(name[1:])
        if len(name) > MAX_SUBFEED_NAME:
            raise UsageError(f"a subfeed name is at most {MAX_SUBFEED_NAME} characters")
        return hashlib.sha1(name.encode("utf-8")).hexdigest()
    if isinstance(name, (dict, list)):
        text = json.dumps(name, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()
    raise UsageError(f"a subfeed name is a string, dict or list, not {type(name).__name__}")


def subfeed_uri_name(name: SubfeedName) -> str:
    """The name as written in URIs: strings as they are, dicts and lists as ``~<hash>``."""
    return name if isinstance(name, str) else "~" + subfeed_hash(name)


def feed_uri(feed_id: str, subfeed_name: SubfeedName | None = None) -> str:
    if subfeed_name is None:
        return f"feed://{feed_id}"
    return f"feed://{feed_id}/{quote(subfeed_uri_name(subfeed_name), safe='')}"


@dataclass(frozen=True)
class ParsedFeedUri:
    feed_id: str
    subfeed_name: str | None  # as in the URI, unquoted (``~<hash>`` for dict names)


def parse_feed_uri(uri: str) -> ParsedFeedUri:
    """``feed://<feedId>[/<subfeed>]``; InvalidUriError otherwise."""
    if not isinstance(uri, str) or not uri.startswith("feed://"):
        raise InvalidUriError(f"not a feed URI: {str(uri)[:100]!r} (expected feed://<feedId>[/<subfeed>])")
    rest = uri[len("feed://"):]
    feed_id, sep, name = rest.partition("/")
    if not is_feed_id(feed_id):
        raise InvalidUriError(f"bad feed id in {uri[:100]!r}: expected 64 lower-case hex digits")
    if not sep:
        return ParsedFeedUri(feed_id, None)
    subfeed = unquote(name)
    if not subfeed:
        raise InvalidUriError(f"empty subfeed name in {uri[:100]!r}")
    if subfeed.startswith("~") and not is_subfeed_hash(subfeed[1:]):
        raise InvalidUriError(f"bad subfeed hash in {uri[:100]!r}: ~ must be followed by 40 hex digits")
    return ParsedFeedUri(feed_id, subfeed)


def message_size(message: Any) -> int:
    """Bytes of the message as compact JSON (UTF-8); UsageError if it is not a JSON object."""
    if not isinstance(message, dict):
        raise UsageError(f"a feed message must be a JSON object (dict), not {type(message).__name__}")
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"a feed message must be plain JSON: {exc}") from None
    return len(text.encode("utf-8"))


def check_message(message: Any, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    size = message_size(message)
    if size > limit:
        raise UsageError(f"a feed message is at most {limit} bytes of JSON; this one has {size}")
    assert isinstance(message, dict)
    return message
