"""Mutables: a small JSON key -> JSON value map kept in SQLite in the config dir (``mutables.db``).

Same table as the original daemon: ``mutables(sha1 TEXT PRIMARY KEY, key TEXT, value TEXT)`` where
``sha1`` is the sha1 of the canonical JSON of the key (sorted keys, no spaces). Blocking I/O: call it
from worker threads; each call opens its own connection, so threads never share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StoreError, UsageError

if TYPE_CHECKING:  # sqlite3 (1.3 MB of the daemon's idle RSS) loads at the first mutable asked for
    import sqlite3

FILENAME = "mutables.db"
MAX_KEY_BYTES = 4096


def canonical_json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"mutable keys and values must be JSON: {exc}") from None


class Mutables:
    def __init__(self, config_dir: Path) -> None:
        self.path = Path(config_dir) / FILENAME
        self._created = False  # the table is made at the first use, not at daemon start

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        import sqlite3

        try:
            db = sqlite3.connect(self.path, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            with db:
                if not self._created:
                    db.execute("CREATE TABLE IF NOT EXISTS mutables (sha1 TEXT PRIMARY KEY, key TEXT, value TEXT)")
                    with contextlib.suppress(OSError):
                        os.chmod(self.path, 0o600)
                    self._created = True
                yield db
        except sqlite3.Error as exc:
            raise StoreError(f"mutables database {self.path}: {exc}") from exc
        finally:
            db.close()

    @staticmethod
    def _hash(key: Any) -> tuple[str, str]:
        text = canonical_json(key)
        if len(text.encode("utf-8")) > MAX_KEY_BYTES:
            raise UsageError(f"mutable key is too long (more than {MAX_KEY_BYTES} bytes of JSON)")
        return hashlib.sha1(text.encode("utf-8")).hexdigest(), text

    def get(self, key: Any) -> tuple[bool, Any]:
        """(True, value) when set, (False, None) otherwise."""
        sha1, _ = self._hash(key)
        with self._db() as db:
            row = db.execute("SELECT value FROM mutables WHERE sha1 = ?", (sha1,)).fetchone()
        if row is None:
            return False, None
        return True, json.loads(row[0])

    def set(self, key: Any, value: Any) -> None:
        sha1, key_text = self._hash(key)
        value_text = canonical_json(value)
        with self._db() as db:
            db.execute(
                "INSERT INTO mutables (sha1, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(sha1) DO UPDATE SET value = excluded.value",
                (sha1, key_text, value_text),
            )

    def delete(self, key: Any) -> bool:
        """True when the key was there."""
        sha1, _ = self._hash(key)
        with self._db() as db:
            return db.execute("DELETE FROM mutables WHERE sha1 = ?", (sha1,)).rowcount > 0
