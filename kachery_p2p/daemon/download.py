"""One download: providers x pieces over parallel QUIC streams, verified chunk by chunk.

Pieces go to the store's resumable partial file; a chunk is verified against its manifest hash when
its last piece lands, and the whole sha1 is checked before the file is renamed into the store.
Nothing unverified ever reaches the store's content paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kachery_p2p.daemon.deadline import within

from ..errors import NotFoundError, RemoteProtocolError, StoreError, VerificationError
from ..ids import SHA1_EMPTY, FileUri
from ..quic.identity import short_node_id
from ..store import ContentStore, Manifest, PartialFile
from ..transfer.plan import DownloadPlan, Pace, Piece
from ..transfer.policy import Attempt, DownloadPolicy, fits_on_disk
from ..transfer.timeline import Timeline
from .download_checks import AttemptFailed, disk_full, liars_among, no_attempt_left, piece_hashes
from .download_manifest import provider_manifest, uri_manifest
from .download_progress import progress_message
from .download_rounds import STREAMS_PER_PROVIDER, Arrivals, run_rounds
from .endpoint import LinkClosed
from .piece_fetch import fetch_piece, lead_time, start_head_piece
from .slow import Provider

log = logging.getLogger("kachery_p2p.download")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
PROGRESS_INTERVAL = 0.25
ENDGAME_AGE_FACTOR = 1.5
ENDGAME_RECHECK = 0.25
# Before any piece has arrived there is no usual duration: duplicate after this long.
ENDGAME_FIRST_AGE = 2.0
BUSY_BACKOFF = 0.2
MAX_BUSY = 50
# Files above this size have a manifest (verification chunks); the URI names it when it was stored.
MANIFEST_THRESHOLD = 20_000_000
# Pieces: up to 4 MiB while much is left, smaller towards the end (guided sizing, transfer/plan.py);
# never below this, so that the per-request cost stays small next to the bytes.
MAX_PIECE = 4 * 1024 * 1024
MIN_PIECE = 256 * 1024
MIN_STEAL = 64 * 1024  # the smallest tail of a piece in flight that an idle provider takes over
disk_usage = shutil.disk_usage  # replaced in tests


def new_plan(chunks: list[tuple[int, int]], verified: set[int]) -> DownloadPlan:
    return DownloadPlan(chunks, verified, piece_size=MAX_PIECE, min_piece_size=MIN_PIECE)


class Download:
    def __init__(self, store: ContentStore, uri: FileUri, providers: list[Provider], progress: Progress) -> None:
        self.store, self.uri, self.sha1, self.providers, self.progress = store, uri, uri.sha1, providers, progress
        self.bad_providers: list[str] = []
        self._last_progress = 0.0
        self.started = time.monotonic()
        # Bytes as they arrive (not only whole pieces): what progress and node-info show live.
        self.bytes_received = 0
        self.last_byte_at = self.started
        self.first_byte_at: float | None = None
        # Hooks for streaming readers: the partial file once open, and each chunk once verified.
        self.on_partial: Callable[[PartialFile], None] | None = None
        self.on_verified: Callable[[int], None] | None = None
        self.plan: DownloadPlan | None = None
        self.timeline: Timeline | None = None
        # Late providers (add_provider): every provider seen, the policy, and the running fetch's hook.
        self._everyone: list[Provider] = list(providers)
        self._policy: DownloadPolicy | None = None
        self._trusted: Manifest | None = None
        self._attempt_size: int | None = None
        self._join: Callable[[Provider], None] | None = None
        # Providers the search may still find (Search.feed): waited for when all known so far failed.
        self.arrivals = Arrivals()

    async def run(self) -> Path:
        """Download, verify and store the file. Size claims are tried in turn (``DownloadPolicy``): the
        bytes that verify against the sha1 win and every provider that claimed otherwise is dropped."""
        everyone = self._everyone = list(self.providers)
        policy = self._policy = DownloadPolicy({p.node_id: p.size for p in everyone}, self._needs_provider_manifest)
        trusted = self._trusted = await uri_manifest(self.uri, everyone) if self.uri.manifest is not None else None
        if trusted is not None:
            policy.liars |= {p.node_id for p in everyone if p.size != trusted.size}
            policy.claims = {p.node_id: p.size for p in everyone if p.size == trusted.size}
        failures: list[str] = []
        while (attempt := policy.next_attempt(self._fits)) is not None:
            self.providers = [p for p in everyone if p.node_id in attempt.providers and p.node_id not in policy.liars]
            self._attempt_size = attempt.size
            try:
                path, banned = await self._attempt(attempt, trusted)
            except AttemptFailed as exc:
                policy.attempt_failed(attempt, exc.liars)
                failures.append(str(exc))
                continue
            liars = policy.succeeded(attempt) | banned
            self.bad_providers = sorted(liars)
            for node_id in self.bad_providers:
                log.warning("provider %s lied about %s; dropped it", short_node_id(node_id), self.sha1)
            return path
        raise no_attempt_left(self.sha1, policy, failures, trusted is not None)

    def add_provider(self, provider: Provider) -> bool:
        """A provider found after the download started (the search goes on meanwhile). Its size claim
        is one more claim for the policy (never trusted over verification); with the size now being
        fetched it joins the running download at once, with its own streams. True when it is one of
        this download's providers now (for a range read: when it claims the URI manifest's size)."""
        if any(p.node_id == provider.node_id for p in self._everyone):
            return False
        self._everyone.append(provider)
        if self._policy is None:  # not started yet (it starts with the others), or a range read
            if self._trusted is not None and provider.size != self._trusted.size:
                return False  # a range read of proven chunks: only the manifest's size
        elif self._trusted is not None and provider.size != self._trusted.size:
            self._policy.liars.add(provider.node_id)
            return False
        else:
            self._policy.claims[provider.node_id] = provider.size
            if provider.size != self._attempt_size or provider.node_id in self._policy.liars:
                return False
        self.providers.append(provider)
        if self._join is not None:
            self._join(provider)
        self.arrivals.arrived()
        return True

    async def _attempt(self, attempt: Attempt, trusted: Manifest | None) -> tuple[Path, set[str]]:
        """One try at one claimed size (and, for a big file without a URI manifest, one provider's
        manifest). The path and the providers found sending bad bytes; AttemptFailed otherwise."""
        size = attempt.size
        if size == 0:
            if self.sha1 != SHA1_EMPTY:
                raise AttemptFailed(f"providers say {self.sha1} is empty, which cannot be", set(attempt.providers))
            return (await asyncio.to_thread(self.store.store_bytes, b"")).path, set()
        manifest = trusted
        if manifest is None:
            manifest = await provider_manifest(self.sha1, size, attempt.manifest_source, self.providers)
        partial = await asyncio.to_thread(self.store.open_partial, self.sha1, size, manifest)
        # Chunk hashes from a provider's manifest are unproven until the whole sha1 checks out: such
        # an attempt that fails is discarded at once, and its bans prove nothing.
        unproven = attempt.manifest_source is not None
        if self.on_partial is not None and not unproven:  # a streaming reader may trust verified chunks
            self.on_partial(partial)
        try:
            chunks = [(c.start, c.end) for c in manifest.chunks] if manifest else [(0, size)]
            plan = self.plan = new_plan(chunks, partial.verified_chunks())
            try:
                await self._fetch(plan, partial)
            except NotFoundError as exc:
                if unproven:
                    await asyncio.to_thread(partial.discard)
                raise AttemptFailed(f"{size} bytes: {exc}", set() if unproven else set(plan.banned)) from None
            try:
                path = await asyncio.to_thread(partial.finish)
            except VerificationError as exc:  # finish discarded the partial file
                source = attempt.manifest_source or ""
                raise AttemptFailed(f"the manifest from {short_node_id(source)} lied: {exc}", {source}) from None
        except StoreError as exc:
            if disk_full(exc):
                await asyncio.to_thread(partial.discard)
                raise StoreError(f"{exc}; removed the partial download of {self.sha1}") from exc
            raise
        finally:
            partial.close()  # quick, and not cancellable half-way: the next open of this file needs the lock
        await self._report(plan, force=True)
        return path, set(plan.banned)

    def _needs_provider_manifest(self, size: int) -> bool:
        return self.uri.manifest is None and size > MANIFEST_THRESHOLD

    def _fits(self, size: int) -> bool:
        usage = disk_usage(self.store.temp_dir)
        try:
            already = os.stat(self.store.temp_dir / f"partial-{self.sha1}.data").st_blocks * 512
        except OSError:
            already = 0
        return fits_on_disk(size, usage.free, usage.total, min(already, size))

    async def fetch_range(self, start: int, end: int) -> tuple[int, int]:
        """Fetch only the chunks covering [start, end). Returns an open file descriptor holding the
        bytes at their file offsets, and the file size. The caller reads and closes it.

        Only with the URI's manifest (whose chunk hashes are proven) are chunks fetched alone; any
        other file is downloaded whole and verified first."""
        manifest = await uri_manifest(self.uri, self.providers) if self.uri.manifest is not None else None
        wanted = set(manifest.chunks_covering(start, min(end, manifest.size))) if manifest else set()
        if manifest is None or len(wanted) == len(manifest.chunks):
            path = await self.run()
            fd = os.open(path, os.O_RDONLY)
            return fd, os.fstat(fd).st_size
        size = manifest.size
        self._trusted = manifest  # providers found from now on join if they claim this size (add_provider)
        self.providers = [p for p in self.providers if p.size == size]
        partial = await asyncio.to_thread(self.store.open_partial, self.sha1, size, manifest)
        if self.on_partial is not None:
            self.on_partial(partial)
        try:
            skip = set(range(len(manifest.chunks))) - wanted
            plan = self.plan = new_plan([(c.start, c.end) for c in manifest.chunks], partial.verified_chunks() | skip)
            await self._fetch(plan, partial)
            # Opened before the partial is released, so a full download finishing now cannot pull
            # the file away from under us.
            fd = os.open(partial.data_path, os.O_RDONLY)
        finally:
            partial.close()  # quick, and not cancellable half-way: the next open of this file needs the lock
        return fd, size

    async def _fetch(self, plan: DownloadPlan, partial: PartialFile) -> None:
        wake = asyncio.Event()
        finished = asyncio.Event()
        verifying: set[asyncio.Task[None]] = set()
        pace = plan.pace = Pace(ENDGAME_AGE_FACTOR, ENDGAME_FIRST_AGE)  # how fast each provider delivers

        suspects: dict[int, dict[tuple[int, int], tuple[str, str]]] = {}
        fatal: list[StoreError] = []
        timeline = self.timeline = Timeline(time.monotonic())
        for provider in self.providers:
            timeline.joined(provider.node_id, timeline.started)

        def drop(node_id: str) -> None:
            log.warning("provider %s sent bad bytes for %s; dropping it", short_node_id(node_id), self.sha1)
            self.bad_providers.append(node_id)

        async def verify(index: int) -> None:
            # A file of one chunk is finished (hashed, synced, stored) right after: no resume record for it.
            if await asyncio.to_thread(partial.verify_chunk, index, len(partial.chunks) > 1):
                plan.chunk_verified(index)
                if self.on_verified is not None:
                    self.on_verified(index)
                # A chunk that failed when several providers sent it, now good from one: whoever's
                # earlier piece differs from the good bytes lied.
                earlier = suspects.pop(index, None)
                if earlier:
                    for node_id in await asyncio.to_thread(liars_among, partial.data_path, earlier):
                        if plan.ban(node_id):
                            drop(node_id)
            else:
                sources = plan.piece_sources(index)
                if len(set(sources.values())) > 1:
                    suspects[index] = await asyncio.to_thread(piece_hashes, partial.data_path, sources)
                for node_id in plan.chunk_failed(index):
                    drop(node_id)
            if plan.finished:
                finished.set()
            wake.set()

        def verify_later(index: int | None) -> None:  # a piece ended: verify the chunk whose bytes all arrived
            if index is not None:
                verifying.add(task := asyncio.ensure_future(verify(index)))
                task.add_done_callback(verifying.discard)
            wake.set()

        async def one_piece(
            provider: Provider, piece: Piece, endgame: bool, now: float, early: Callable[[], None]
        ) -> str:
            """Fetch one piece and record it: "ok", "busy" (the provider's serving budget is in use),
            "failed" (the piece is queued again) or "fatal" (our disk: the download stops)."""
            try:
                lead = lead_time(provider.session)
                got = await fetch_piece(
                    self.sha1, provider, piece, partial, plan, endgame, self.count_received, early, lead
                )
                size = plan.end_of(piece) - piece.start  # less than asked when its tail was stolen
                timeline.piece(provider.node_id, now, time.monotonic(), size, True, not got)
            except StoreError as exc:  # our disk, not the provider: the whole download stops
                fatal.append(exc)
                finished.set()
                wake.set()
                return "fatal"
            except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, OSError) as exc:
                timeline.piece(provider.node_id, now, time.monotonic(), piece.size, False, endgame)
                plan.piece_failed(piece, provider.node_id)
                wake.set()
                if isinstance(exc, RemoteProtocolError) and exc.code == "busy":
                    return "busy"
                log.info("piece %d-%d from %s failed: %s", piece.start, piece.end, short_node_id(provider.node_id), exc)
                return "failed"
            except BaseException:
                # Cancelled (its round ended) or a bug: the piece goes back to the plan, or it would stay "in
                # flight" with no one fetching it and the download would wait for it forever.
                plan.piece_failed(piece, provider.node_id)
                wake.set()
                raise
            if not got:
                plan.piece_failed(piece, provider.node_id)  # this copy lost: no longer one of its fetchers
            else:
                pace.record(time.monotonic() - now, size, provider.node_id)
                verify_later(plan.piece_received(piece, provider.node_id))
            wake.set()
            await self._report(plan)
            return "ok"

        async def work(provider: Provider, fetches: list[asyncio.Future[str]]) -> None:
            """One stream's worth of pieces from ``provider``. The next piece is asked for when the current one
            is about a round trip from its end (``fetch_piece``'s ``early``), so the provider never waits for a
            request between pieces: asking only after each piece ended left the path idle for a round trip
            each time (15 % of a 100 Mbit/s, 20 ms path). At most two pieces per stream."""
            busy = 0
            while not plan.finished and provider.node_id not in plan.banned and not fatal:
                now = time.monotonic()
                piece = plan.next_piece(provider.node_id, now) or plan.steal(provider.node_id, now, MIN_STEAL)
                endgame = False
                if piece is None:
                    piece = plan.endgame_piece(provider.node_id, now)
                    endgame = piece is not None
                if piece is None:
                    if plan.in_flight == 0 and not verifying:
                        return
                    wake.clear()
                    # Look again later: a piece in flight may become old enough to duplicate.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await within(wake.wait(), ENDGAME_RECHECK)
                    continue
                early = asyncio.Event()
                current = asyncio.ensure_future(one_piece(provider, piece, endgame, now, early.set))
                fetches.append(current)
                near_end = asyncio.ensure_future(early.wait())
                try:
                    await asyncio.wait({current, near_end}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    near_end.cancel()
                if not current.done():
                    # The piece before this one must have ended: never more than two per stream.
                    await asyncio.gather(*[f for f in fetches if f is not current])
                    fetches[:] = [current]
                    continue  # it ends on its own; the next piece is asked for meanwhile
                status = current.result()
                if status == "busy" and busy < MAX_BUSY:
                    busy += 1
                    await asyncio.sleep(BUSY_BACKOFF)
                    continue
                if status != "ok":
                    return
                busy = 0  # busy answers in a row: one piece delivered resets it

        async def worker(provider: Provider) -> None:
            fetches: list[asyncio.Future[str]] = []
            try:
                await work(provider, fetches)
                await asyncio.gather(*fetches)  # the piece still ending when the stream ran out of work
            finally:
                plan.workers -= 1
                for fetch in fetches:
                    fetch.cancel()
                if fetches:
                    await asyncio.gather(*fetches, return_exceptions=True)

        heading = start_head_piece(plan, partial, self.providers, self.count_received, verify_later)
        workers: list[asyncio.Future[None]] = []

        def join(provider: Provider) -> None:  # a provider found while the download runs starts at once
            if plan.finished or fatal or provider.node_id in plan.banned or all(w.done() for w in workers):
                return  # (between rounds: the next round starts its streams)
            timeline.joined(provider.node_id, time.monotonic())
            plan.workers += STREAMS_PER_PROVIDER
            workers.extend(asyncio.ensure_future(worker(provider)) for _ in range(STREAMS_PER_PROVIDER))
            wake.set()

        self._join = join
        try:
            await run_rounds(self.providers, plan, worker, workers, finished, verifying, fatal, self.arrivals)
        finally:
            self._join = None
            if heading is not None:
                heading.cancel()  # the first bytes that come with "has", if still on their way
            timeline.done(time.monotonic())
            log.info("pieces of %s (%d bytes%s): %s", self.sha1, plan.total_bytes,
                     "" if plan.finished else f", stopped with {plan.bytes_pending} to hand out and"
                     f" {plan.in_flight} in flight", timeline.describe(short_node_id))
        if fatal:
            raise fatal[0]
        if not plan.finished:
            bad = ", ".join(short_node_id(n) for n in self.bad_providers)
            raise NotFoundError(
                f"could not download {self.sha1}: every provider failed" + (f" (bad data from {bad})" if bad else "")
            )

    def count_received(self, size: int) -> None:
        self.last_byte_at = now = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self.bytes_received += size

    async def _report(self, plan: DownloadPlan, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        await self.progress(progress_message(plan, self.providers, self.started, self.first_byte_at))
