"""Human-readable sizes and rates, in decimal units throughout (kB, MB, GB; MB/s)."""

from __future__ import annotations

from typing import Any


def human_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"


def human_rate(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value / 1e6:.2f} MB/s"


def human_seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    seconds = int(value)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{value:.0f}s"
