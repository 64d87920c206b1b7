"""The daemon's feeds: local logs in SQLite, appends signed by the owner, long-polling readers.

Every subfeed's log is verified from #0 when first opened in this run; after that the verified tail
(count, last signature) is kept in memory and every message, local or from a peer, must continue it.
Readers waiting in ``watch`` are woken the moment a message is stored (no polling). Replication with
peers lives in ``feeds_peers``; this module does not know about the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError, UsageError
from ..feeds.access import may_write, parse_access_rules
from ..feeds.names import (
    MAX_SUBFEED_BYTES,
    MAX_SUBFEED_MESSAGES,
    check_feed_id,
    check_feed_name,
    check_message,
    check_subfeed_hash,
)
from ..feeds.signing import ChainVerifier, LogError, canonical_json, sign_message

if TYPE_CHECKING:  # the database (and SQLite) is opened at the first feed request, not at daemon start
    from ..feeds.store import FeedStore

log = logging.getLogger("kachery_p2p.feeds")

MAX_WAIT_MSEC = 120_000
MAX_WATCHES = 256
READ_BATCH = 1000
MAX_FAULTS = 100


class SubfeedLog:
    """The verified tail of one subfeed and a future that resolves at the next append."""

    def __init__(self, verifier: ChainVerifier, size: int) -> None:
        self.verifier = verifier
        self.size = size
        self.lock = asyncio.Lock()
        self.users = 0  # readers and streams holding this entry (an empty one is dropped when none is left)
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def count(self) -> int:
        return self.verifier.count

    def changed(self) -> asyncio.Future[None]:
        return self._changed

    def notify(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()


class FeedService:
    def __init__(self, config_dir: Path, node_id: str) -> None:
        self._config_dir = config_dir
        self._db: FeedStore | None = None
        self.node_id = node_id
        self._logs: dict[tuple[str, str], SubfeedLog] = {}
        self.faults: deque[dict[str, Any]] = deque(maxlen=MAX_FAULTS)
        self.peers: Any = None  # FeedPeers, once the peer network is up

    def attach(self, peers: Any) -> None:
        """Replicate with channel peers through ``peers`` (a FeedPeers, built by the node, which
        imports both modules: feeds_peers imports this one, so this one must not import it)."""
        self.peers = peers

    @property
    def store(self) -> FeedStore:
        """The feeds database, opened at first use: an idle daemon that serves no feed keeps SQLite out of
        its memory."""
        if self._db is None:
            from ..feeds.store import FeedStore

            self._db = FeedStore(self._config_dir)
        return self._db

    def close(self) -> None:
        if self.peers is not None:
            self.peers.stop()
        if self._db is not None:
            self._db.close()

    # -- feeds ---------------------------------------------------------------------------------------
    def create_feed(self, name: str | None) -> str:
        if name is not None:
            check_feed_name(name)
            if self.store.feed_id_for_name(name) is not None:
                raise UsageError(f"a feed named {name!r} already exists")
        return self.store.create_feed(name).feed_id

    def feed_id_for_name(self, name: str) -> str | None:
        return self.store.feed_id_for_name(check_feed_name(name))

    def load_feed(self, feed_id: str) -> dict[str, Any]:
        """A feed by id: ours, or another node's that we now follow."""
        check_feed_id(feed_id)
        if not self.store.has_feed(feed_id):
            self.store.add_remote_feed(feed_id)
        return self.feed_info(feed_id)

    def feed_info(self, feed_id: str) -> dict[str, Any]:
        writeable = self.store.feed_key(check_feed_id(feed_id)) is not None
        return {"feedId": feed_id, "isWriteable": writeable, "nodeId": self.node_id if writeable else None}

    def delete_feed(self, feed_id: str) -> bool:
        check_feed_id(feed_id)
        for key in [k for k in self._logs if k[0] == feed_id]:
            del self._logs[key]
        if self.peers is not None:
            self.peers.forget(feed_id)
        return self.store.delete_feed(feed_id)

    def list_feeds(self) -> list[dict[str, Any]]:
        return self.store.list_feeds()

    def is_owner(self, feed_id: str) -> bool:
        return self.store.feed_key(feed_id) is not None

    # -- logs ----------------------------------------------------------------------------------------
    def subfeed(self, feed_id: str, subfeed_hash: str) -> SubfeedLog:
        key = (check_feed_id(feed_id), check_subfeed_hash(subfeed_hash))
        entry = self._logs.get(key)
        if entry is None:
            verifier, size = self.store.open_log(feed_id, subfeed_hash)
            entry = self._logs[key] = SubfeedLog(verifier, size)
        return entry

    def acquire(self, feed_id: str, subfeed_hash: str) -> SubfeedLog:
        entry = self.subfeed(feed_id, subfeed_hash)
        entry.users += 1
        return entry

    def release(self, feed_id: str, subfeed_hash: str, entry: SubfeedLog) -> None:
        """Undo acquire; an entry of an empty subfeed nobody holds is forgotten (peers may name any hash)."""
        entry.users -= 1
        key = (feed_id, subfeed_hash)
        if entry.users <= 0 and entry.count == 0 and not entry.lock.locked() and self._logs.get(key) is entry:
            del self._logs[key]

    async def append(self, feed_id: str, subfeed_hash: str, messages: list[Any]) -> int:
        """Sign and append (owner only); the new number of messages."""
        key = self.store.feed_key(check_feed_id(feed_id))
        if key is None:
            raise UsageError(f"feed {feed_id[:12]}... is not writeable on this node (use submit_message)")
        checked = [check_message(m) for m in messages]
        entry = self.subfeed(feed_id, subfeed_hash)
        async with entry.lock:
            signed = []
            tail = ChainVerifier(feed_id, subfeed_hash, entry.count, entry.verifier.last_signature)
            now_ms = int(time.time() * 1000)
            for message in checked:  # signed here, by the key we hold: nothing to verify
                signed.append(tail.advance(sign_message(key, subfeed_hash, tail.count, tail.last_signature, message,
                                                        now_ms)))
            self._store(entry, feed_id, subfeed_hash, signed)
        return entry.count

    def ingest(self, feed_id: str, subfeed_hash: str, signed: list[Any]) -> int:
        """Messages from a peer continuing our copy: verify each, then store all that verified.

        Raises LogError after storing the good ones before the first bad one."""
        entry = self.subfeed(feed_id, subfeed_hash)
        tail = ChainVerifier(feed_id, subfeed_hash, entry.count, entry.verifier.last_signature)
        good: list[dict[str, Any]] = []
        error: LogError | None = None
        for message in signed:
            try:
                good.append(tail.accept(message))
            except LogError as exc:
                error = exc
                break
        if good:
            self._store(entry, feed_id, subfeed_hash, good)
        if error is not None:
            raise error
        return len(good)

    def _store(self, entry: SubfeedLog, feed_id: str, subfeed_hash: str, signed: list[dict[str, Any]]) -> None:
        if entry.count + len(signed) > MAX_SUBFEED_MESSAGES:
            raise UsageError(f"a subfeed holds at most {MAX_SUBFEED_MESSAGES} messages")
        added = sum(len(canonical_json(m)) for m in signed)
        if entry.size + added > MAX_SUBFEED_BYTES:
            raise UsageError(f"a subfeed holds at most {MAX_SUBFEED_BYTES} bytes of messages")
        self.store.append(feed_id, subfeed_hash, entry.count, signed)
        for message in signed:  # verified by the caller (or signed by us)
            entry.verifier.advance(message)
        entry.size += added
        entry.notify()

    def read_texts(self, feed_id: str, subfeed_hash: str, position: int, limit: int) -> list[str]:
        entry = self.subfeed(feed_id, subfeed_hash)
        limit = max(0, min(limit, entry.count - position))
        return self.store.read_texts(feed_id, subfeed_hash, position, limit) if limit else []

    def report_fault(self, peer: str, feed_id: str, subfeed_hash: str, error: LogError) -> None:
        log.warning("peer %s sent a %s log of feed %s subfeed %s: %s; dropped its messages",
                    peer[:12], error.kind, feed_id[:12], subfeed_hash[:12], error)
        self.faults.append({"peer": peer, "feedId": feed_id, "subfeedHash": subfeed_hash, "kind": error.kind,
                            "message": str(error), "time": time.time()})

    # -- readers -------------------------------------------------------------------------------------
    async def watch(
        self, watches: dict[str, dict[str, Any]], wait_msec: float, signed: bool, max_num_messages: int
    ) -> dict[str, list[Any]]:
        """Messages after each watch's position; waits up to ``wait_msec`` for the first one to arrive."""
        if len(watches) > MAX_WATCHES:
            raise UsageError(f"at most {MAX_WATCHES} watches at once")
        parsed = []
        for name, watch in watches.items():
            if not isinstance(watch, dict):
                raise UsageError(f"watch {name!r} must be an object")
            position = watch.get("position", 0)
            if not isinstance(position, int) or isinstance(position, bool) or position < 0:
                raise UsageError(f"watch {name!r}: position must be a non-negative integer")
            feed_id, subfeed_hash = check_feed_id(watch.get("feedId")), check_subfeed_hash(watch.get("subfeedHash"))
            parsed.append((name, feed_id, subfeed_hash, position))
        deadline = time.monotonic() + min(max(0.0, wait_msec), MAX_WAIT_MSEC) / 1000
        if self.peers is not None:  # follow other nodes' subfeeds even for readers that do not wait
            for _name, feed_id, subfeed_hash, _position in parsed:
                if not self.is_owner(feed_id):
                    self.peers.want(feed_id, subfeed_hash)
        while True:
            result = self._collect(parsed, signed, max_num_messages)
            if any(result.values()):
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result
            held = [(f, h, self.acquire(f, h)) for _n, f, h, _p in parsed]
            try:
                waiting = {entry.changed() for _f, _s, entry in held}
                await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for feed_id, subfeed_hash, entry in held:
                    self.release(feed_id, subfeed_hash, entry)

    def _collect(self, parsed: list[tuple[str, str, str, int]], signed: bool, limit: int) -> dict[str, list[Any]]:
        result: dict[str, list[Any]] = {}
        for name, feed_id, subfeed_hash, position in parsed:
            texts = self.read_texts(feed_id, subfeed_hash, position, limit if limit > 0 else READ_BATCH * 10)
            messages = [json.loads(t) for t in texts]
            result[name] = messages if signed else [m["body"]["message"] for m in messages]
        return result

    def num_messages(self, feed_id: str, subfeed_hash: str) -> int:
        return self.subfeed(feed_id, subfeed_hash).count

    def peek_count(self, feed_id: str, subfeed_hash: str) -> int:
        """Like num_messages, but a subfeed with nothing stored is not opened (peers may name any hash)."""
        entry = self._logs.get((feed_id, subfeed_hash))
        if entry is not None:
            return entry.count
        return self.num_messages(feed_id, subfeed_hash) if self.store.has_messages(feed_id, subfeed_hash) else 0

    # -- access rules --------------------------------------------------------------------------------
    def access_rules(self, feed_id: str, subfeed_hash: str) -> dict[str, Any]:
        self._owned(feed_id)
        return self.store.access_rules(feed_id, check_subfeed_hash(subfeed_hash)) or {"rules": []}

    def set_access_rules(self, feed_id: str, subfeed_hash: str, rules: Any) -> None:
        self._owned(feed_id)
        self.store.set_access_rules(feed_id, check_subfeed_hash(subfeed_hash), parse_access_rules(rules))

    def may_submit(self, feed_id: str, subfeed_hash: str, node_id: str) -> bool:
        return may_write(self.store.access_rules(feed_id, subfeed_hash), node_id)

    def _owned(self, feed_id: str) -> None:
        if not self.store.has_feed(check_feed_id(feed_id)):
            raise NotFoundError(f"no feed {feed_id[:12]}... on this node")
        if not self.is_owner(feed_id):
            raise UsageError("access rules are kept by the feed's owner; this node only has a copy")
