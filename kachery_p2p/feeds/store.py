"""SQLite persistence of feeds: ``<config dir>/feeds.db``, mode 0600 because it holds the feeds' private keys.

Tables: feeds (id, private key or NULL for copies of other nodes' feeds), feed_names (local names),
subfeeds (access rules), messages (the signed messages as canonical JSON text, one row per number).
The store does not verify: the daemon verifies a subfeed's whole log when it first opens it
(``open_log``) and every message before ``append``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .signing import ChainVerifier, FeedKey, LogError, canonical_json

log = logging.getLogger("kachery_p2p.feeds")

FEEDS_DB = "feeds.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (feed_id TEXT PRIMARY KEY, private_key BLOB, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feed_names (name TEXT PRIMARY KEY, feed_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subfeeds (
    feed_id TEXT NOT NULL, subfeed_hash TEXT NOT NULL, access_rules TEXT,
    PRIMARY KEY (feed_id, subfeed_hash));
CREATE TABLE IF NOT EXISTS messages (
    feed_id TEXT NOT NULL, subfeed_hash TEXT NOT NULL, number INTEGER NOT NULL, signed TEXT NOT NULL,
    PRIMARY KEY (feed_id, subfeed_hash, number)) WITHOUT ROWID;
"""


def _create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 if missing; tighten it if it is open to others."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s was open to other users (mode %04o); setting it to 0600", path, mode)
            os.chmod(path, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the feeds database {path}: {exc.strerror or exc}") from None


class FeedStore:
    def __init__(self, config_dir: Path) -> None:
        self.path = config_dir / FEEDS_DB
        _create_private_file(self.path)
        for suffix in ("-wal", "-shm"):  # SQLite's side files hold the same data: same mode
            side = Path(str(self.path) + suffix)
            if side.exists():
                _create_private_file(side)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the feeds database {self.path}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- feeds -----------------------------------------------------------------------------------
    def create_feed(self, name: str | None = None) -> FeedKey:
        key = FeedKey.generate()
        with self._tx() as db:
            db.execute("INSERT INTO feeds VALUES (?, ?, ?)", (key.feed_id, key.private_bytes(), time.time()))
            if name is not None:
                db.execute("INSERT OR REPLACE INTO feed_names VALUES (?, ?)", (name, key.feed_id))
        return key

    def add_remote_feed(self, feed_id: str) -> None:
        """Remember another node's feed (we keep a copy of what we read of it)."""
        self.db.execute("INSERT OR IGNORE INTO feeds VALUES (?, NULL, ?)", (feed_id, time.time()))

    def has_feed(self, feed_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM feeds WHERE feed_id = ?", (feed_id,)).fetchone() is not None

    def feed_key(self, feed_id: str) -> FeedKey | None:
        row = self.db.execute("SELECT private_key FROM feeds WHERE feed_id = ?", (feed_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return FeedKey.from_private_bytes(bytes(row[0]))

    def feed_id_for_name(self, name: str) -> str | None:
        row = self.db.execute("SELECT feed_id FROM feed_names WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def delete_feed(self, feed_id: str) -> bool:
        with self._tx() as db:
            found = db.execute("DELETE FROM feeds WHERE feed_id = ?", (feed_id,)).rowcount > 0
            for table in ("feed_names", "subfeeds", "messages"):
                db.execute(f"DELETE FROM {table} WHERE feed_id = ?", (feed_id,))
        return found

    def list_feeds(self) -> list[dict[str, Any]]:
        names: dict[str, list[str]] = {}
        for name, feed_id in self.db.execute("SELECT name, feed_id FROM feed_names ORDER BY name"):
            names.setdefault(feed_id, []).append(name)
        counts: dict[str, list[dict[str, Any]]] = {}
        query = "SELECT feed_id, subfeed_hash, COUNT(*) FROM messages GROUP BY feed_id, subfeed_hash"
        for feed_id, subfeed, count in self.db.execute(query):
            counts.setdefault(feed_id, []).append({"subfeedHash": subfeed, "numMessages": int(count)})
        return [
            {
                "feedId": feed_id,
                "names": names.get(feed_id, []),
                "writeable": key is not None,
                "created": created,
                "subfeeds": counts.get(feed_id, []),
            }
            for feed_id, key, created in self.db.execute(
                "SELECT feed_id, private_key, created FROM feeds ORDER BY created"
            )
        ]

    # -- messages ---------------------------------------------------------------------------------
    def open_log(self, feed_id: str, subfeed_hash: str) -> tuple[ChainVerifier, int]:
        """Verify the stored log from #0; the verified tail and its size in bytes.

        Rows after the first one that fails are ignored (and overwritten by later appends)."""
        verifier = ChainVerifier(feed_id, subfeed_hash)
        size = 0
        for _number, text in self.db.execute(
            "SELECT number, signed FROM messages WHERE feed_id = ? AND subfeed_hash = ? ORDER BY number",
            (feed_id, subfeed_hash),
        ):
            try:
                verifier.accept(json.loads(text))
            except (LogError, ValueError) as exc:
                log.error("feed %s subfeed %s: stored log is bad at #%d (%s); using the %d messages before",
                          feed_id[:12], subfeed_hash[:12], verifier.count, exc, verifier.count)
                break
            size += len(text)
        return verifier, size

    def append(self, feed_id: str, subfeed_hash: str, first_number: int, signed: list[dict[str, Any]]) -> list[str]:
        """Store verified messages numbered from ``first_number``; their JSON texts."""
        texts = [canonical_json(m).decode("utf-8") for m in signed]
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?)",
                [(feed_id, subfeed_hash, first_number + i, text) for i, text in enumerate(texts)],
            )
        return texts

    def has_messages(self, feed_id: str, subfeed_hash: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM messages WHERE feed_id = ? AND subfeed_hash = ? LIMIT 1", (feed_id, subfeed_hash)
        ).fetchone()
        return row is not None

    def read_texts(self, feed_id: str, subfeed_hash: str, position: int, limit: int) -> list[str]:
        rows = self.db.execute(
            "SELECT signed FROM messages WHERE feed_id = ? AND subfeed_hash = ? AND number >= ? "
            "ORDER BY number LIMIT ?",
            (feed_id, subfeed_hash, position, limit),
        )
        return [str(text) for (text,) in rows]

    # -- access rules ------------------------------------------------------------------------------
    def access_rules(self, feed_id: str, subfeed_hash: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT access_rules FROM subfeeds WHERE feed_id = ? AND subfeed_hash = ?", (feed_id, subfeed_hash)
        ).fetchone()
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    def set_access_rules(self, feed_id: str, subfeed_hash: str, rules: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO subfeeds VALUES (?, ?, ?)", (feed_id, subfeed_hash, json.dumps(rules))
        )
