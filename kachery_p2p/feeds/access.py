"""Access rules of a subfeed, kept by the owner only: ``{"rules": [{"nodeId": <64 hex>, "write": bool}]}``.

A node named with ``write: true`` may submit messages; the owner signs and appends them. Everyone else
is refused. At most MAX_RULES rules.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .names import is_feed_id

MAX_RULES = 1000


def parse_access_rules(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("rules"), list):
        raise UsageError('access rules must be {"rules": [{"nodeId": ..., "write": true|false}, ...]}')
    rules = value["rules"]
    if len(rules) > MAX_RULES:
        raise UsageError(f"at most {MAX_RULES} access rules")
    parsed = []
    for rule in rules:
        if not isinstance(rule, dict) or not is_feed_id(rule.get("nodeId")):
            raise UsageError("each access rule needs a nodeId of 64 lower-case hex digits")
        write = rule.get("write", False)
        if not isinstance(write, bool):
            raise UsageError("write must be true or false")
        parsed.append({"nodeId": rule["nodeId"], "write": write})
    return {"rules": parsed}


def may_write(rules: dict[str, Any] | None, node_id: str) -> bool:
    if not rules:
        return False
    return any(r.get("nodeId") == node_id and r.get("write") is True for r in rules.get("rules", []))


def with_write_access(rules: dict[str, Any] | None, node_id: str, write: bool) -> dict[str, Any]:
    kept = [r for r in (rules or {"rules": []})["rules"] if r.get("nodeId") != node_id]
    if write:
        kept.append({"nodeId": node_id, "write": True})
    return parse_access_rules({"rules": kept})
