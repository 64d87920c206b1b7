"""Files over the peer network: who has a file, downloads, and range reads."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kachery_p2p.daemon.deadline import within

from ..errors import NotFoundError, RemoteProtocolError, UsageError
from ..ids import FileUri
from ..quic import messages
from .activity import ActivityPump
from .download import Download, Provider
from .download_head import store_head
from .endpoint import LinkClosed
from .files import RangeReader
from .running import DownloadRegistry, RunningDownload, path_result
from .session import PeerSession
from .slow import HeadComing

if TYPE_CHECKING:
    from ..store import ContentStore
    from .peers import PeerTable

log = logging.getLogger("kachery_p2p.transfers")
Progress = Callable[[dict[str, Any]], Awaitable[None]]
FIND_TIMEOUT = 5.0
# After the first provider answers, others are waited for only this long: the download starts, and
# providers that answer later join it at once (Download.add_provider).
EXTRA_PROVIDER_WAIT = 0.02
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
        self._bytes_done = 0
        self._active: set[Download] = set()
        # Downloads followed by clients (running.py); the node stops them all when the daemon stops.
        self.downloads = DownloadRegistry()
        self.activity = ActivityPump()  # downloads and uploads in progress (kachery-p2p-transfers)

    async def _ask(self, session: PeerSession, sha1: str, timeout: float, head: int = 0) -> Provider | None:
        """Does the peer have the file, and (``head``) its first bytes with the answer (servers that do not
        know "head" send none): all of a small file, waited for here and used only if its sha1 checks out
        (store_head); or a larger file's first piece, not waited for: it streams in while the download
        starts, and is verified with its chunk like any piece (piece_fetch.start_head_piece)."""
        header = {"op": "has", "sha1": sha1, **({"head": head} if head else {})}
        try:
            reply, body, stop = await session.request_early(header, timeout, head)
            if reply.get("code") == "not_authorized" and await session.channels_settled(timeout):
                reply, body, stop = await session.request_early(header, timeout, head)  # it has our channels now
            size = messages.check_ok(reply)["size"]
        except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, KeyError):
            return None
        if not isinstance(size, int) or size < 0:
            stop()
            return None
        provider = Provider(session, size, self.peers.session_for)
        sent = reply.get("head")
        if type(sent) is not int or not 0 < sent <= min(size, head):
            return provider
        if sent < size:
            provider.head_coming = HeadComing(sent, body, stop)
            return provider
        try:
            data = await within(body, timeout)
        except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError):
            stop()
            return provider
        provider.head = data if len(data) == size else None
        return provider

    async def find_providers(self, sha1: str, timeout: float, head: int = 0) -> AsyncIterator[Provider]:
        """Ask every channel peer, including peers that connect while we wait, who has the file (and for
        its first ``head`` bytes with the answer: a download's).

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
                        ask = self._ask(session, sha1, max(0.1, deadline - time.monotonic()), head)
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

    async def _collect(self, sha1: str, timeout: float, rest: list[Search] | None = None) -> list[Provider]:
        """Providers that answer until shortly after the first. With ``rest``, the search goes on: it is
        put there for the caller (who stops it), to add later providers to the running download."""
        search = Search(self.find_providers(sha1, timeout, messages.HEAD_MAX))
        providers: list[Provider] = []
        deadline = time.monotonic() + timeout
        first_at: float | None = None
        ended = False
        try:
            while True:
                limit = deadline if first_at is None else min(deadline, first_at + EXTRA_PROVIDER_WAIT)
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    provider = await within(search.found.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if provider is None:
                    ended = True
                    break
                providers.append(provider)
                if first_at is None:
                    first_at = time.monotonic()
        finally:
            if rest is not None and providers and not ended:
                rest.append(search)
            else:
                await search.stop()
        return providers

    async def _providers(
        self, uri: FileUri, timeout: float | None, rest: list[Search] | None = None
    ) -> list[Provider]:
        wait = FIND_TIMEOUT if timeout is None else timeout
        started = time.monotonic()
        providers = await self._collect(uri.sha1, wait, rest)
        if not providers:
            raise NotFoundError(self._not_found(uri, time.monotonic() - started))
        return providers

    def _not_found(self, uri: FileUri, elapsed: float) -> str:
        """Who was asked, for how long, and what the user can do about it."""
        peers = len(self.peers.channel_peers())
        asked = f"asked {peers} channel peer{'s' if peers != 1 else ''}, searched {elapsed:.1f} s"
        message = f"file not found: no peer has {uri.sha1} ({asked})"
        if peers == 0:
            return message + (
                "; no peer shares a channel with this node: join a channel that a peer has joined"
                " (kachery-p2p-join-channel NAME) and reach peers with --bootstrap HOST:PORT or on this LAN"
            )
        return message

    @property
    def bytes_downloaded(self) -> int:
        """Bytes received from peers since the daemon started, counted as they arrive."""
        return self._bytes_done + sum(d.bytes_received for d in self._active)

    async def load(self, uri: FileUri, timeout: float | None, progress: Progress) -> Path:
        """Download the file, or follow its download if another client started it already."""
        entry = self.downloads.start(uri, "load", lambda entry: self._run_load(entry, timeout))
        return path_result(await self.downloads.follow(entry, progress))

    async def _run_load(self, entry: RunningDownload, timeout: float | None) -> Path:
        uri = entry.uri
        rest: list[Search] = []
        providers = await self._providers(uri, timeout, rest)
        ids, size = [p.node_id for p in providers], providers[0].size
        try:
            # Listed by kachery-p2p-transfers (activity.py), which can cancel it; followers: running.py.
            return await self.activity.track_load(
                str(uri), uri.sha1, size, ids, _no_progress, lambda tracked: self._load(entry, providers, tracked, rest)
            )
        finally:
            for search in rest:
                await search.stop()

    async def _load(
        self, entry: RunningDownload, providers: list[Provider], progress: Progress,
        rest: list[Search] | None = None,
    ) -> Path:
        uri = entry.uri
        download = entry.download = Download(self.store, uri, providers, progress)
        # Providers that answer from now on join the running download (the search goes on meanwhile),
        # and kachery-p2p-transfers lists them.
        joined = functools.partial(self.activity.provider_joined, uri.sha1)
        feeder = asyncio.ensure_future(rest[0].feed(download, joined)) if rest else None
        try:
            return await self._load_with(entry, download)
        finally:
            await _stop_feeder(feeder)

    async def _load_with(self, entry: RunningDownload, download: Download) -> Path:
        uri = entry.uri
        entry.phase = "queued"
        async with self._slots, self._file_lock(uri.sha1):
            path = await asyncio.to_thread(self.store.find_local, uri)
            if path is None:
                entry.phase = "downloading"
                with self._counting(download):
                    path = await store_head(self.store, download) or await download.run()
        entry.phase = "done"
        entry.bad_providers = download.bad_providers
        return path

    @contextlib.contextmanager
    def _counting(self, download: Download) -> Iterator[None]:
        self._active.add(download)
        try:
            yield
        finally:
            self._active.discard(download)
            self._bytes_done += download.bytes_received

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
        """Bytes [start, end) of a file we do not have, fetching only the chunks that cover them, each
        range streamed as soon as the chunks covering it are verified."""
        rest: list[Search] = []
        providers = await self._providers(uri, timeout, rest)
        reader = RangeReader(start, end)

        async def run(entry: RunningDownload) -> Path | int:
            download = entry.download = Download(self.store, uri, providers, _no_progress)
            download.on_partial = reader.opened
            download.on_verified = reader.verified
            # Providers that answer from now on join the range fetch too (the search goes on meanwhile).
            feeder = asyncio.ensure_future(rest[0].feed(download)) if rest else None
            try:
                entry.phase = "queued"
                async with self._slots, self._file_lock(uri.sha1):
                    path = await asyncio.to_thread(self.store.find_local, uri)
                    if path is not None:
                        return path
                    entry.phase = "downloading"
                    with self._counting(download):
                        path = await store_head(self.store, download)  # a small file, whole and verified
                        if path is not None:
                            return path
                        fd, _size = await download.fetch_range(start, end if end is not None else 1 << 62)
                return fd
            finally:
                await _stop_feeder(feeder)
                for search in rest:
                    await search.stop()

        # (the search also ends by itself at its timeout, should the task be cancelled before it starts)
        entry = self.downloads.start(uri, "read", run, share=False)
        # The verified size (the URI's manifest, or the whole file checked), not a provider's claim.
        size = await reader.proven_size(entry)
        last = size if end is None else min(end, size)
        if start > last:
            reader.abandon(entry)
            raise UsageError(f"bad range: start {start} is after end {last} (file size {size})")
        reader.end = last
        return last - start, reader.stream(entry)


async def _stop_feeder(feeder: asyncio.Future[None] | None) -> None:
    """Stop the task that adds late providers to a running download; a failure of its own is logged (it
    would otherwise pass unseen: the download goes on without the providers it would have added)."""
    if feeder is None:
        return
    feeder.cancel()
    (outcome,) = await asyncio.gather(feeder, return_exceptions=True)
    if isinstance(outcome, Exception):
        log.error("adding late providers to a download failed", exc_info=outcome)


async def _no_progress(message: dict[str, Any]) -> None:
    return None


class Search:
    """A search for providers running in its own task; what it finds waits in ``found`` (None: ended)."""

    def __init__(self, providers: AsyncIterator[Provider]) -> None:
        self.found: asyncio.Queue[Provider | None] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run(providers))

    async def _run(self, providers: AsyncIterator[Provider]) -> None:
        try:
            async for provider in providers:
                self.found.put_nowait(provider)
        finally:
            self.found.put_nowait(None)

    async def feed(self, download: Download, joined: Callable[[str], None] | None = None) -> None:
        """Add each provider found to ``download``; ``joined`` is told the node id of each that joined it.
        Until the search ends, a download whose providers all failed waits for more (Download.arrivals)."""
        download.arrivals.expect()
        try:
            while (provider := await self.found.get()) is not None:
                if download.add_provider(provider) and joined is not None:
                    joined(provider.node_id)
        finally:
            download.arrivals.ended()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
