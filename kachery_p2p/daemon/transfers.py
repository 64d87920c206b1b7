"""Files over the peer network: who has a file, downloads, and range reads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError, RemoteProtocolError, UsageError
from ..ids import FileUri
from ..quic import messages
from .activity import ActivityPump
from .download import Download, Provider
from .endpoint import LinkClosed
from .files import read_fd_range, read_file_range
from .session import PeerSession

if TYPE_CHECKING:
    from ..store import ContentStore
    from .peers import PeerTable

Progress = Callable[[dict[str, Any]], Awaitable[None]]
FIND_TIMEOUT = 5.0
EXTRA_PROVIDER_WAIT = 0.15
MAX_DOWNLOADS = 4
# A search with no connection under way ends once every peer answered and this much time passed.
SETTLE_TIME = 1.0
RECHECK_PEERS = 0.25


class Transfers:
    def __init__(self, store: ContentStore, peers: PeerTable) -> None:
        self.peers = peers
        self.store = store
        # Downloads at once (more wait their turn, first come first served), and one per file.
        self._slots = asyncio.Semaphore(MAX_DOWNLOADS)
        self._file_locks: dict[str, asyncio.Lock] = {}
        self.bytes_downloaded = 0
        self.activity = ActivityPump()  # downloads and uploads in progress (kachery-p2p-transfers)

    async def _ask(self, session: PeerSession, sha1: str, timeout: float) -> Provider | None:
        try:
            reply, _ = await session.request({"op": "has", "sha1": sha1}, timeout=timeout)
            size = messages.check_ok(reply)["size"]
        except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, KeyError):
            return None
        if not isinstance(size, int) or size < 0:
            return None
        return Provider(session, size, self.peers.session_for)

    async def find_providers(self, sha1: str, timeout: float) -> AsyncIterator[Provider]:
        """Ask every channel peer, including peers that connect while we wait, who has the file.

        Ends at the timeout, or earlier once every peer has answered and no connection to a new
        peer is under way (waiting longer could not find anything more)."""
        deadline = time.monotonic() + timeout
        settle_at = time.monotonic() + min(timeout, SETTLE_TIME)
        asked: set[str] = set()
        pending: set[asyncio.Future[Any]] = set()
        found_any = False
        try:
            while True:
                for session in self.peers.channel_peers():
                    if session.node_id not in asked:
                        asked.add(session.node_id or "")
                        ask = self._ask(session, sha1, max(0.1, deadline - time.monotonic()))
                        pending.add(asyncio.ensure_future(ask))
                now = time.monotonic()
                if now >= deadline:
                    return
                if not pending and (
                    found_any or (now >= settle_at and not self.peers.connecting)
                ):
                    return  # every peer answered: with a provider in hand, or with nobody else coming
                self.peers.peer_added.clear()
                waiter: asyncio.Future[Any] = asyncio.ensure_future(self.peers.peer_added.wait())
                # Also look again now and then: a connected peer may start sharing a channel.
                wake_at = min(deadline if pending or now >= settle_at else settle_at, now + RECHECK_PEERS)
                try:
                    done, _ = await asyncio.wait(
                        {*pending, waiter}, timeout=max(0.0, wake_at - now), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                for task in done - {waiter}:
                    pending.discard(task)
                    provider = task.result()
                    if provider is not None:
                        found_any = True
                        yield provider
        finally:
            for task in pending:
                task.cancel()

    def find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._find(uri, timeout)

    async def _find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        async for provider in self.find_providers(uri.sha1, timeout):
            session = provider.session
            yield {
                "node_id": provider.node_id,
                "label": session.label,
                "size": provider.size,
                "local": False,
                "nodeId": provider.node_id,
                "fileSize": provider.size,
                "fileKey": {"sha1": uri.sha1},
            }

    async def _collect(self, sha1: str, timeout: float) -> list[Provider]:
        providers: list[Provider] = []
        deadline = time.monotonic() + timeout
        first_at: float | None = None
        iterator = self.find_providers(sha1, timeout).__aiter__()
        try:
            while True:
                limit = deadline if first_at is None else min(deadline, first_at + EXTRA_PROVIDER_WAIT)
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    provider = await asyncio.wait_for(iterator.__anext__(), remaining)
                except (StopAsyncIteration, asyncio.TimeoutError):
                    break
                providers.append(provider)
                if first_at is None:
                    first_at = time.monotonic()
        finally:
            with contextlib.suppress(Exception):
                await iterator.aclose()  # type: ignore[attr-defined]
        return providers

    async def _providers(self, uri: FileUri, timeout: float | None) -> list[Provider]:
        wait = FIND_TIMEOUT if timeout is None else timeout
        providers = await self._collect(uri.sha1, wait)
        if not providers:
            peers = len(self.peers.channel_peers())
            raise NotFoundError(
                f"file not found: no peer has {uri.sha1} (asked {peers} channel peer{'s' if peers != 1 else ''}"
                f" for {wait:g} s)"
            )
        return providers

    async def load(self, uri: FileUri, timeout: float | None, progress: Progress) -> Path:
        providers = await self._providers(uri, timeout)
        ids, size = [p.node_id for p in providers], providers[0].size
        return await self.activity.track_load(
            str(uri), uri.sha1, size, ids, progress, lambda tracked: self._load(uri, providers, tracked)
        )

    async def _load(self, uri: FileUri, providers: list[Provider], progress: Progress) -> Path:
        await progress({"bytesLoaded": 0, "bytesTotal": providers[0].size, "providers": len(providers)})
        download = Download(self.store, uri, providers, progress)
        async with self._slots, self._file_lock(uri.sha1):
            path = await asyncio.to_thread(self.store.find_local, uri)
            if path is None:
                try:
                    path = await download.run()
                finally:
                    self.bytes_downloaded += download.bytes_fetched
        if download.bad_providers:
            await progress({"badProviders": download.bad_providers})
        return path

    @contextlib.asynccontextmanager
    async def _file_lock(self, sha1: str) -> AsyncIterator[None]:
        lock = self._file_locks.setdefault(sha1, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked():
                self._file_locks.pop(sha1, None)

    async def read_remote_range(
        self, uri: FileUri, start: int, end: int | None, timeout: float | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        """Bytes [start, end) of a file we do not have, fetching only the chunks that cover them."""
        providers = await self._providers(uri, timeout)

        async def no_progress(message: dict[str, Any]) -> None:
            return None

        download = Download(self.store, uri, providers, no_progress)
        async with self._slots, self._file_lock(uri.sha1):
            path = await asyncio.to_thread(self.store.find_local, uri)
            if path is not None:
                size = path.stat().st_size
                last = size if end is None else min(end, size)
                if start > last:
                    raise UsageError(f"bad range: start {start} is after end {last} (file size {size})")
                return last - start, read_file_range(path, start, last)
            try:
                fd, size = await download.fetch_range(start, end if end is not None else 1 << 62)
            finally:
                self.bytes_downloaded += download.bytes_fetched
        last = size if end is None else min(end, size)  # the verified size, not a provider's claim
        if start > last:
            os.close(fd)
            raise UsageError(f"bad range: start {start} is after end {last} (file size {size})")
        return last - start, read_fd_range(fd, start, last)


