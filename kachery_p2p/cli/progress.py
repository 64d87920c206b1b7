"""Progress of a load: a tqdm bar on a terminal, JSON lines with --json, silence otherwise."""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Any


class ProgressPrinter:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._bar: Any = None
        self._interactive = not as_json and sys.stderr.isatty()

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, message: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()
            return
        bad = message.get("badProviders")
        if bad:
            ids = ", ".join(str(node_id)[:12] for node_id in bad)
            sys.stderr.write(f"warning: dropped provider(s) {ids}: they sent bytes that failed verification\n")
        if not self._interactive or "bytesLoaded" not in message:
            return
        total = message.get("bytesTotal")
        loaded = message.get("bytesLoaded", 0)
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = loaded
        providers = message.get("providers")
        if providers is not None:
            self._bar.set_postfix_str(f"{providers} provider{'s' if providers != 1 else ''}", refresh=False)
        self._bar.refresh()
