"""What a running download tells its client: bytes loaded of the total, providers still used, the kinds of
path they are reached by, and when the first byte came."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..transfer.plan import DownloadPlan
from .slow import Provider


def progress_message(
    plan: DownloadPlan, providers: Sequence[Provider], started: float, first_byte_at: float | None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "bytesLoaded": plan.total_bytes if plan.finished else min(plan.bytes_loaded, plan.total_bytes),
        "bytesTotal": plan.total_bytes,
        "providers": len([p for p in providers if p.node_id not in plan.banned]),
        "paths": sorted({p.session.link.path.kind for p in providers}),
    }
    if first_byte_at is not None:
        message["firstByteSec"] = round(first_byte_at - started, 4)
    return message
