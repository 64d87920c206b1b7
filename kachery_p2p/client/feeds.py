"""Feeds in the Python API, with the original kachery-p2p's names and semantics.

    feed = kp.create_feed("my-feed")              # or kp.load_feed("my-feed", create=True)
    sf = feed.get_subfeed("main")                 # or a dict name: feed.get_subfeed({"workspace": "w1"})
    sf.append_message({"a": 1})
    uri = sf.get_uri()                            # feed://<feedId>/main, readable on channel peers
    kp.load_subfeed(uri).get_next_messages(wait_msec=5000)

Signing, verification and replication happen in the daemon; this module only talks to it (stdlib only).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

from ..client_config import client_config_from_environ
from ..errors import DaemonError, FeedPermissionError, InvalidUriError, UsageError
from ..feeds.names import (
    SubfeedName,
    check_feed_id,
    feed_uri,
    parse_feed_uri,
    subfeed_hash,
    subfeed_uri_name,
)
from .http import ControlClient

# Append requests stay under the control endpoint's body limit (64 KiB).
_APPEND_BATCH_BYTES = 48 * 1024


def _client() -> ControlClient:
    return ControlClient(client_config_from_environ())


def _post(path: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    try:
        return _client().post_json(path, payload, timeout=timeout)
    except DaemonError as exc:
        if "refused the message" in str(exc):
            raise FeedPermissionError(str(exc)) from None
        raise


# -- module functions -------------------------------------------------------------------------------


def create_feed(feed_name: str | None = None) -> Feed:
    """A new feed owned by this node (named ``feed_name`` on this node, if given)."""
    feed_id = _post("/feed/create", {"feedName": feed_name})["feedId"]
    return Feed(f"feed://{feed_id}")


def get_feed_id(feed_name: str, *, create: bool = False) -> str | None:
    """The id of the local feed named ``feed_name``; None if there is none (a new one with create=True)."""
    feed_id = _post("/feed/feed-id", {"feedName": feed_name})["feedId"]
    if feed_id is None and create:
        return create_feed(feed_name).get_feed_id()
    return None if feed_id is None else str(feed_id)


def load_feed(feed_name_or_uri: str, *, timeout_sec: float | None = None, create: bool = False) -> Feed:
    """A feed by ``feed://<id>``, a ``sha1://`` snapshot, or a local name."""
    if feed_name_or_uri.startswith(("feed://", "sha1://")):
        return Feed(feed_name_or_uri, timeout_sec=timeout_sec)
    feed_id = get_feed_id(feed_name_or_uri, create=create)
    if feed_id is None:
        raise UsageError(f"no feed named {feed_name_or_uri!r} on this node (use create=True to make one)")
    return Feed(f"feed://{feed_id}", timeout_sec=timeout_sec)


def load_subfeed(subfeed_uri: str) -> Subfeed:
    """``feed://<feedId>/<subfeed>`` or ``sha1://.../feed.json?subfeedName=<subfeed>``."""
    if subfeed_uri.startswith("sha1://"):
        base, sep, query = subfeed_uri.partition("?subfeedName=")
        if not sep or not query:
            raise InvalidUriError(f"a snapshot subfeed URI ends with ?subfeedName=<name>: {subfeed_uri[:100]!r}")
        return Feed(base).get_subfeed(unquote(query))
    parsed = parse_feed_uri(subfeed_uri)
    if parsed.subfeed_name is None:
        raise InvalidUriError(f"no subfeed in {subfeed_uri[:100]!r} (expected feed://<feedId>/<subfeed>)")
    return Feed(f"feed://{parsed.feed_id}").get_subfeed(parsed.subfeed_name)


def delete_feed(feed_name_or_uri: str) -> None:
    if feed_name_or_uri.startswith("feed://"):
        feed_id: str | None = parse_feed_uri(feed_name_or_uri).feed_id
    else:
        feed_id = get_feed_id(feed_name_or_uri)
        if feed_id is None:
            raise UsageError(f"no feed named {feed_name_or_uri!r} on this node")
    _post("/feed/delete", {"feedId": feed_id})


def watch_for_new_messages(
    subfeed_watches: dict[str, dict[str, Any]], *, wait_msec: float, signed: bool = False
) -> dict[str, list[Any]]:
    """``{watchName: {feedId, subfeedName | subfeedHash, position}}`` -> ``{watchName: [messages]}``.

    Returns as soon as any watched subfeed has a message after its position, or after ``wait_msec``."""
    watches = {}
    for name, watch in subfeed_watches.items():
        if "subfeedHash" in watch:
            hash_ = str(watch["subfeedHash"])
        elif "subfeedName" in watch:
            hash_ = subfeed_hash(watch["subfeedName"])
        else:
            raise UsageError(f"watch {name!r} needs a subfeedName or a subfeedHash")
        watches[name] = {"feedId": watch.get("feedId"), "subfeedHash": hash_, "position": watch.get("position", 0)}
    return _watch(watches, wait_msec, signed, 0)


def _watch(watches: dict[str, Any], wait_msec: float, signed: bool, limit: int) -> dict[str, list[Any]]:
    payload = {"watches": watches, "waitMsec": wait_msec, "signed": signed, "maxNumMessages": limit}
    reply = _post("/feed/watch", payload, timeout=wait_msec / 1000 + 30)
    return {str(k): list(v) for k, v in reply["messages"].items()}


def list_feeds() -> list[dict[str, Any]]:
    """Feeds on this node: ``feedId``, local ``names``, ``writeable``, ``subfeeds`` with message counts."""
    return list(_client().get_json("/feed/list")["feeds"])


def feed_faults() -> list[dict[str, Any]]:
    """Logs refused from peers since the daemon started: ``peer``, ``feedId``, ``subfeedHash``, ``kind``
    (forged, reordered, truncated, malformed, too large), ``message``, ``time``."""
    return list(_client().get_json("/feed/list")["faults"])


# -- classes ----------------------------------------------------------------------------------------


class Feed:
    def __init__(self, uri: str, *, timeout_sec: float | None = None) -> None:
        self._uri = uri
        self._snapshot: dict[str, Any] | None = None
        if uri.startswith("sha1://"):
            from .api import load_json

            data = load_json(uri, timeout_sec=timeout_sec)
            if not isinstance(data, dict) or not isinstance(data.get("subfeeds"), dict):
                raise UsageError(f"{uri[:100]} is not a feed snapshot")
            self._snapshot = data
            self._feed_id = str(data.get("feedId", ""))
            self._writeable = False
            self._node_id: str | None = None
            return
        self._feed_id = parse_feed_uri(uri).feed_id
        info = _post("/feed/load", {"feedId": self._feed_id})
        self._writeable = bool(info["isWriteable"])
        self._node_id = info.get("nodeId")

    def __repr__(self) -> str:
        return f"Feed({self.get_uri()!r})"

    def is_writeable(self) -> bool:
        return self._writeable

    def is_snapshot(self) -> bool:
        return self._snapshot is not None

    def get_feed_id(self) -> str:
        return self._feed_id

    def get_feed_node_id(self) -> str | None:
        """This node's id when it owns the feed; None otherwise (the owner is found when needed)."""
        return self._node_id

    def get_uri(self) -> str:
        return self._uri if self._snapshot is not None else feed_uri(self._feed_id)

    def get_subfeed(self, subfeed_name: SubfeedName, position: int = 0) -> Subfeed:
        return Subfeed(self, subfeed_name, position)

    def delete(self) -> None:
        if self._snapshot is not None:
            raise UsageError("a snapshot cannot be deleted")
        _post("/feed/delete", {"feedId": self._feed_id})

    def create_snapshot(self, subfeed_names: list[SubfeedName]) -> Feed:
        """Store the listed subfeeds' messages as a kachery file; a read-only Feed at its ``sha1://`` URI."""
        from .api import store_json

        subfeeds = {}
        for name in subfeed_names:
            subfeed = self.get_subfeed(name)
            messages = []
            while batch := subfeed.get_next_messages(wait_msec=0):
                messages.extend(batch)
            subfeeds[subfeed.get_subfeed_hash()] = {"subfeedHash": subfeed.get_subfeed_hash(), "messages": messages}
        uri = store_json({"feedId": self._feed_id, "subfeeds": subfeeds}, basename="feed.json")
        return Feed(uri)

    def _snapshot_messages(self, hash_: str) -> list[Any]:
        assert self._snapshot is not None
        entry = self._snapshot["subfeeds"].get(hash_)
        return list(entry.get("messages", [])) if isinstance(entry, dict) else []


class Subfeed:
    def __init__(self, feed: Feed, subfeed_name: SubfeedName, position: int = 0) -> None:
        self._feed = feed
        self._name = subfeed_name
        self._hash = subfeed_hash(subfeed_name)
        self._position = position

    def __repr__(self) -> str:
        return f"Subfeed({self.get_uri()!r})"

    def get_uri(self) -> str:
        if self._feed.is_snapshot():
            return f"{self._feed.get_uri()}?subfeedName={quote(subfeed_uri_name(self._name), safe='')}"
        return feed_uri(self._feed.get_feed_id(), self._name)

    def get_feed(self) -> Feed:
        return self._feed

    def get_subfeed_name(self) -> SubfeedName:
        return self._name

    def get_subfeed_hash(self) -> str:
        return self._hash

    def get_position(self) -> int:
        return self._position

    def set_position(self, position: int) -> None:
        self._position = position

    def get_num_local_messages(self) -> int:
        if self._feed.is_snapshot():
            return len(self._feed._snapshot_messages(self._hash))
        return int(_post("/feed/num-messages", self._ids())["numMessages"])

    get_num_messages = get_num_local_messages  # deprecated name in the original

    def _ids(self) -> dict[str, Any]:
        return {"feedId": self._feed.get_feed_id(), "subfeedHash": self._hash}

    def get_next_messages(
        self, *, wait_msec: float = 10, signed: bool = False, max_num_messages: int = 0, advance_position: bool = True
    ) -> list[Any]:
        """Messages after the position; waits up to ``wait_msec`` for one to arrive (returns at once if any)."""
        if self._feed.is_snapshot():
            if signed:
                raise UsageError("a snapshot keeps the messages, not their signatures")
            messages = self._feed._snapshot_messages(self._hash)[self._position:]
            if max_num_messages > 0:
                messages = messages[:max_num_messages]
        else:
            watch = {"w": {**self._ids(), "position": self._position}}
            messages = _watch(watch, wait_msec, signed, max_num_messages)["w"]
        if advance_position:
            self._position += len(messages)
        return messages

    def get_next_message(self, *, wait_msec: float, signed: bool = False, advance_position: bool = True) -> Any:
        messages = self.get_next_messages(
            wait_msec=wait_msec, signed=signed, max_num_messages=1, advance_position=advance_position
        )
        return messages[0] if messages else None

    def message_stream(self, *, signed: bool = False) -> Iterator[Any]:
        """Every message from the position on, as it arrives (ends only for snapshots)."""
        while True:
            messages = self.get_next_messages(wait_msec=5000, signed=signed)
            yield from messages
            if self._feed.is_snapshot() and not messages:
                return

    def print_messages(self) -> None:
        for message in self.message_stream():
            print(json.dumps(message), flush=True)

    def print_signed_messages(self) -> None:
        for message in self.message_stream(signed=True):
            print(json.dumps(message), flush=True)

    def append_message(self, message: dict[str, Any]) -> None:
        self.append_messages([message])

    def append_messages(self, messages: list[dict[str, Any]]) -> None:
        """Sign and append (this node must own the feed)."""
        if not self._feed.is_writeable():
            raise UsageError("this feed is not writeable on this node (use submit_message)")
        batch: list[Any] = []
        size = 0
        for message in messages:
            length = len(json.dumps(message))
            if batch and size + length > _APPEND_BATCH_BYTES:
                _post("/feed/append", {**self._ids(), "messages": batch})
                batch, size = [], 0
            batch.append(message)
            size += length
        if batch:
            _post("/feed/append", {**self._ids(), "messages": batch})

    def submit_message(self, message: dict[str, Any]) -> None:
        """Send to the feed's owner, who appends it if the access rules let this node write."""
        self.submit_messages([message])

    def submit_messages(self, messages: list[dict[str, Any]]) -> None:
        if self._feed.is_snapshot():
            raise UsageError("a snapshot is read-only")
        for message in messages:
            _post("/feed/submit", {**self._ids(), "messages": [message]}, timeout=30)

    def get_access_rules(self) -> dict[str, Any]:
        return _post("/feed/access-rules", self._ids())

    def set_access_rules(self, access_rules: dict[str, Any]) -> None:
        _post("/feed/set-access-rules", {**self._ids(), "accessRules": access_rules})

    def grant_write_access(self, node_id: str) -> None:
        self._set_write(node_id, True)

    def revoke_write_access(self, node_id: str) -> None:
        self._set_write(node_id, False)

    def _set_write(self, node_id: str, write: bool) -> None:
        check_feed_id(node_id)
        rules = [r for r in self.get_access_rules().get("rules", []) if r.get("nodeId") != node_id]
        if write:
            rules.append({"nodeId": node_id, "write": True})
        self.set_access_rules({"rules": rules})


def print_messages_forever(subfeed_uri: str, signed: bool = False) -> None:
    """Used by ``kachery-p2p-print-messages``: one JSON message a line until interrupted."""
    subfeed = load_subfeed(subfeed_uri)
    for message in subfeed.message_stream(signed=signed):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
