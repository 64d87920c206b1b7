"""A small file that came whole with a provider's answer to "has" (``messages.HEAD_MAX``): stored at once if
its sha1 checks out, so a small load takes one round trip to a provider instead of two."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

from ..quic.identity import short_node_id
from ..store import ContentStore
from .download import Download

log = logging.getLogger("kachery_p2p.download")


async def store_head(store: ContentStore, download: Download) -> Path | None:
    """The stored path of the first head among the download's providers whose sha1 is the URI's; None
    when no provider sent one that verifies (the download then runs as usual). A head that does not
    verify is never stored, and its provider is counted among the download's bad providers."""
    for provider in download.providers:
        head = provider.head
        if head is None or len(head) != provider.size:
            continue
        if hashlib.sha1(head).hexdigest() != download.sha1:
            log.warning("provider %s sent other bytes for %s with its answer", short_node_id(provider.node_id),
                        download.sha1)
            download.bad_providers.append(provider.node_id)
            continue
        stored = await asyncio.to_thread(store.store_bytes, head)
        download.count_received(len(head))
        await download.progress({
            "bytesLoaded": len(head), "bytesTotal": len(head), "providers": 1,
            "paths": [provider.session.link.path.kind], "firstByteSec": round(time.monotonic() - download.started, 4),
        })
        return Path(stored.path)
    return None
