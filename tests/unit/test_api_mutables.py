"""The daemon's mutables table (SQLite in the config dir)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from kachery_p2p.daemon.mutables import Mutables
from kachery_p2p.errors import UsageError


def test_set_get_delete_with_json_keys(tmp_path: Path) -> None:
    m = Mutables(tmp_path)
    assert m.get("k") == (False, None)
    m.set("k", {"v": [1, 2]})
    m.set({"type": "x", "id": 3}, "dict key")
    assert m.get("k") == (True, {"v": [1, 2]})
    assert m.get({"id": 3, "type": "x"}) == (True, "dict key")  # key order does not matter
    m.set("k", None)
    assert m.get("k") == (True, None)
    assert m.delete("k") is True and m.delete("k") is False
    assert m.get("k") == (False, None)
    assert stat.S_IMODE((tmp_path / "mutables.db").stat().st_mode) == 0o600
    # Survives a reopen; the original's table layout.
    assert Mutables(tmp_path).get({"type": "x", "id": 3}) == (True, "dict key")
    rows = sqlite3.connect(tmp_path / "mutables.db").execute("SELECT sha1, key, value FROM mutables").fetchall()
    assert rows[0][1] == '{"id":3,"type":"x"}' and rows[0][2] == '"dict key"'


def test_bad_keys(tmp_path: Path) -> None:
    m = Mutables(tmp_path)
    with pytest.raises(UsageError, match="JSON"):
        m.set({1, 2}, 1)
    with pytest.raises(UsageError, match="too long"):
        m.set("x" * 5000, 1)
