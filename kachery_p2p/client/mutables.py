"""Mutables: a JSON key -> JSON value map kept by the local daemon (``mutables.db`` in its config dir)."""

from __future__ import annotations

from typing import Any

from .api import _client


def set(key: Any, value: Any) -> None:
    """Set a mutable value (keys and values are any JSON values)."""
    _client().post_json("/mutables/set", {"key": key, "value": value})


def get(key: Any) -> Any:
    """The value, or None when the key is not set."""
    return _client().post_json("/mutables/get", {"key": key}).get("value")


def get_string(key: Any) -> str | None:
    """The value as a string (``str(value)``), or None when the key is not set."""
    value = get(key)
    return None if value is None else str(value)


def delete(key: Any, value: Any = None) -> None:
    """Remove a key (``value`` is accepted and ignored: the original's delete required it)."""
    _client().post_json("/mutables/delete", {"key": key})
