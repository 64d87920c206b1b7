"""Progress of a load: a tqdm bar on a terminal, JSON lines with --json, silence otherwise.

On a terminal the bar is replaced at the end by one summary line (size, time, rate, providers). Sizes
and rates are decimal throughout (kB, MB, MB/s), as in the rest of the CLI (cli/units.py).
"""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import Any

from .units import human_bytes, human_rate


class ProgressPrinter:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._bar: Any = None
        self._interactive = not as_json and sys.stderr.isatty()
        self._started = time.monotonic()
        self._total: int | None = None
        self._loaded = 0
        self._providers: int | None = None

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        if exc_type is None and self._interactive and self._bar is not None:
            sys.stderr.write(self.summary() + "\n")

    def summary(self) -> str:
        seconds = max(time.monotonic() - self._started, 1e-6)
        size = self._total if self._total is not None else self._loaded
        providers = "" if self._providers is None else f" from {self._providers} provider" + (
            "" if self._providers == 1 else "s"
        )
        return f"loaded {human_bytes(size)} in {seconds:.1f} s ({human_rate(size / seconds)}){providers}"

    def update(self, message: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()
            return
        bad = message.get("badProviders")
        if bad:
            ids = ", ".join(str(node_id)[:12] for node_id in bad)
            sys.stderr.write(f"warning: dropped provider(s) {ids}: they sent bytes that failed verification\n")
        if "bytesLoaded" not in message:
            return
        total = message.get("bytesTotal")
        loaded = message.get("bytesLoaded", 0)
        providers = message.get("providers")
        self._total = total if isinstance(total, int) else self._total
        self._loaded = loaded if isinstance(loaded, int) else self._loaded
        self._providers = providers if isinstance(providers, int) else self._providers
        if not self._interactive:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, leave=False)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = loaded
        if providers is not None:
            self._bar.set_postfix_str(f"{providers} provider{'s' if providers != 1 else ''}", refresh=False)
        self._bar.refresh()
