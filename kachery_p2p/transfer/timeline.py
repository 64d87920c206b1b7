"""Where a download's time went, per provider (sans-IO: the caller passes the times).

Each piece fetched is one interval on its provider's line. The summary says, for each provider, when
it joined, when its first piece started, how long it had at least one piece in flight (busy), the gaps
in between (idle) and when its last piece ended: enough to see a late provider, idle links, or a tail
where the last piece waits on one slow provider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Line:
    joined: float
    pieces: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    intervals: list[tuple[float, float]] = field(default_factory=list)


class Timeline:
    def __init__(self, started: float) -> None:
        self.started = started
        self.finished: float | None = None
        self._lines: dict[str, _Line] = {}

    def joined(self, provider: str, now: float) -> None:
        self._lines.setdefault(provider, _Line(now))

    def piece(self, provider: str, start: float, end: float, size: int, ok: bool, duplicate: bool) -> None:
        line = self._lines.setdefault(provider, _Line(start))
        line.intervals.append((start, end))
        if not ok:
            line.failed += 1
        elif duplicate:
            line.duplicates += 1
        else:
            line.pieces += 1
            line.bytes += size

    def done(self, now: float) -> None:
        self.finished = now

    def busy(self, provider: str) -> float:
        """Seconds during which the provider had at least one piece in flight."""
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self._lines[provider].intervals):
            if end <= reach:
                continue
            total += end - max(start, reach)
            reach = end
        return total

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per provider, times in seconds from the download's start."""
        end = self.finished if self.finished is not None else self.started
        out: dict[str, dict[str, float | int | None]] = {}
        for provider, line in self._lines.items():
            first = min((s for s, _ in line.intervals), default=None)
            last = max((e for _, e in line.intervals), default=None)
            busy = self.busy(provider) if line.intervals else 0.0
            out[provider] = {
                "joined": round(line.joined - self.started, 3),
                "first": None if first is None else round(first - self.started, 3),
                "last": None if last is None else round(last - self.started, 3),
                "busy": round(busy, 3),
                "idle": round(max(0.0, end - max(line.joined, self.started)) - busy, 3),
                "pieces": line.pieces,
                "duplicates": line.duplicates,
                "failed": line.failed,
                "mb": round(line.bytes / 1e6, 2),
            }
        return out

    def describe(self, name: Callable[[str], str] = str) -> str:
        total = (self.finished or self.started) - self.started
        parts = [f"{total:.2f} s"]
        for provider, row in self.summary().items():
            parts.append(
                f"{name(provider)}: joined {row['joined']} first {row['first']} last {row['last']}"
                f" busy {row['busy']} idle {row['idle']} pieces {row['pieces']} dup {row['duplicates']}"
                f" failed {row['failed']} {row['mb']} MB"
            )
        return "; ".join(parts)
