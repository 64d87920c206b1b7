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

from ..errors import NotFoundError, RemoteProtocolError, StoreError, VerificationError
from ..ids import SHA1_EMPTY, FileUri
from ..quic import messages
from ..quic.identity import short_node_id
from ..store import ContentStore, Manifest, PartialFile
from ..transfer.plan import DownloadPlan, Piece
from ..transfer.policy import Attempt, DownloadPolicy, fits_on_disk
from .download_checks import AttemptFailed, disk_full, liars_among, no_attempt_left, piece_hashes
from .endpoint import LinkClosed
from .slow import Provider, request_while_alive

log = logging.getLogger("kachery_p2p.download")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
STREAMS_PER_PROVIDER = 4
PIECE_TIMEOUT = 60.0  # a piece stream that delivers no byte for this long is given up (slow is fine)
PROGRESS_INTERVAL = 0.25
MAX_ROUNDS = 5
ENDGAME_AGE_FACTOR = 1.5
ENDGAME_RECHECK = 0.25
# Before any piece has arrived there is no usual duration: duplicate after this long.
ENDGAME_FIRST_AGE = 2.0
WRITE_BLOCK = 1 << 20
BUSY_BACKOFF = 0.2
MAX_BUSY = 50
# Files above this size have a manifest (verification chunks); the URI names it when it was stored.
MANIFEST_THRESHOLD = 20_000_000
MAX_MANIFEST_BYTES = 16 << 20
disk_usage = shutil.disk_usage  # replaced in tests


class Download:
    def __init__(
        self, store: ContentStore, uri: FileUri, providers: list[Provider], progress: Progress
    ) -> None:
        self.store = store
        self.uri = uri
        self.sha1 = uri.sha1
        self.providers = providers
        self.progress = progress
        self.bad_providers: list[str] = []
        self._last_progress = 0.0
        self.started = time.monotonic()
        self.bytes_fetched = 0
        # Bytes as they arrive (not only whole pieces): what progress and node-info show live.
        self.bytes_received = 0
        self.last_byte_at = self.started
        self.first_byte_at: float | None = None
        # Hooks for streaming readers: the partial file once open, and each chunk once verified.
        self.on_partial: Callable[[PartialFile], None] | None = None
        self.on_verified: Callable[[int], None] | None = None
        self.plan: DownloadPlan | None = None

    async def run(self) -> Path:
        """Download, verify and store the file. Size claims are tried in turn (``DownloadPolicy``): the
        bytes that verify against the sha1 win and every provider that claimed otherwise is dropped."""
        everyone = list(self.providers)
        policy = DownloadPolicy({p.node_id: p.size for p in everyone}, self._needs_provider_manifest)
        trusted = await self._uri_manifest(everyone) if self.uri.manifest is not None else None
        if trusted is not None:
            policy.liars |= {p.node_id for p in everyone if p.size != trusted.size}
            policy.claims = {p.node_id: p.size for p in everyone if p.size == trusted.size}
        failures: list[str] = []
        while (attempt := policy.next_attempt(self._fits)) is not None:
            self.providers = [p for p in everyone if p.node_id in attempt.providers and p.node_id not in policy.liars]
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

    async def _attempt(self, attempt: Attempt, trusted: Manifest | None) -> tuple[Path, set[str]]:
        """One try at one claimed size (and, for a big file without a URI manifest, one provider's
        manifest). The path and the providers found sending bad bytes; AttemptFailed otherwise."""
        size = attempt.size
        if size == 0:
            if self.sha1 != SHA1_EMPTY:
                raise AttemptFailed(f"providers say {self.sha1} is empty, which cannot be", set(attempt.providers))
            return (await asyncio.to_thread(self.store.store_bytes, b"")).path, set()
        manifest = trusted if trusted is not None else await self._provider_manifest(size, attempt.manifest_source)
        partial = await asyncio.to_thread(self.store.open_partial, self.sha1, size, manifest)
        # Chunk hashes from a provider's manifest are unproven until the whole sha1 checks out: such
        # an attempt that fails is discarded at once, and its bans prove nothing.
        unproven = attempt.manifest_source is not None
        if self.on_partial is not None and not unproven:  # a streaming reader may trust verified chunks
            self.on_partial(partial)
        try:
            chunks = [(c.start, c.end) for c in manifest.chunks] if manifest else [(0, size)]
            plan = self.plan = DownloadPlan(chunks, partial.verified_chunks())
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
        manifest = await self._uri_manifest(self.providers) if self.uri.manifest is not None else None
        wanted = set(manifest.chunks_covering(start, min(end, manifest.size))) if manifest else set()
        if manifest is None or len(wanted) == len(manifest.chunks):
            path = await self.run()
            fd = os.open(path, os.O_RDONLY)
            return fd, os.fstat(fd).st_size
        size = manifest.size
        self.providers = [p for p in self.providers if p.size == size]
        partial = await asyncio.to_thread(self.store.open_partial, self.sha1, size, manifest)
        if self.on_partial is not None:
            self.on_partial(partial)
        try:
            skip = set(range(len(manifest.chunks))) - wanted
            plan = self.plan = DownloadPlan(
                [(c.start, c.end) for c in manifest.chunks], partial.verified_chunks() | skip
            )
            await self._fetch(plan, partial)
            # Opened before the partial is released, so a full download finishing now cannot pull
            # the file away from under us.
            fd = os.open(partial.data_path, os.O_RDONLY)
        finally:
            partial.close()  # quick, and not cancellable half-way: the next open of this file needs the lock
        return fd, size

    async def _uri_manifest(self, providers: list[Provider]) -> Manifest:
        """The URI's manifest (checked against its sha1) from the first provider that has it."""
        assert self.uri.manifest is not None
        errors = []
        for provider in providers:
            try:
                has, _ = await provider.session.request({"op": "has", "sha1": self.uri.manifest}, timeout=30)
                length = int(messages.check_ok(has)["size"])
                if not 0 < length <= MAX_MANIFEST_BYTES:
                    raise RemoteProtocolError(f"a manifest of {length} bytes")
                header = {"op": "get", "sha1": self.uri.manifest, "start": 0, "end": length}
                reply, data = await provider.session.request(header, timeout=PIECE_TIMEOUT)
                messages.check_ok(reply)
                manifest = Manifest.parse(data, expected_sha1=self.sha1, expected_manifest_sha1=self.uri.manifest)
                if manifest.sha1 != self.sha1:
                    raise VerificationError("the manifest describes another file")
                return manifest
            except (RemoteProtocolError, VerificationError, LinkClosed, asyncio.TimeoutError, ValueError,
                    KeyError, TypeError) as exc:
                errors.append(f"{short_node_id(provider.node_id)}: {exc}")
        raise NotFoundError(f"no provider could give the manifest {self.uri.manifest}: {'; '.join(errors)}")

    async def _provider_manifest(self, size: int, source: str | None) -> Manifest | None:
        """A manifest from one provider (unproven until the whole file verifies); None for a small file."""
        provider = next((p for p in self.providers if p.node_id == source), None)
        if provider is None:
            return None
        try:
            reply, data = await provider.session.request({"op": "manifest", "sha1": self.sha1}, timeout=PIECE_TIMEOUT)
            messages.check_ok(reply)
            manifest = Manifest.parse(data, expected_sha1=self.sha1)
        except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError) as exc:
            raise AttemptFailed(f"no manifest from {short_node_id(provider.node_id)}: {exc}") from None
        except (VerificationError, ValueError) as exc:
            who = provider.node_id
            raise AttemptFailed(f"bad manifest from {short_node_id(who)}: {exc}", {who}) from None
        if manifest.sha1 != self.sha1 or manifest.size != size:
            raise AttemptFailed(f"the manifest from {short_node_id(provider.node_id)} describes another file",
                                 {provider.node_id})
        return manifest

    async def _fetch(self, plan: DownloadPlan, partial: PartialFile) -> None:
        wake = asyncio.Event()
        finished = asyncio.Event()
        verifying: set[asyncio.Task[None]] = set()
        durations: list[float] = []

        suspects: dict[int, dict[tuple[int, int], tuple[str, str]]] = {}
        fatal: list[StoreError] = []

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

        def endgame_age() -> float:
            # Duplicate only pieces that have taken clearly longer than usual.
            return ENDGAME_AGE_FACTOR * sum(durations) / len(durations) if durations else ENDGAME_FIRST_AGE

        async def worker(provider: Provider) -> None:
            busy = 0
            while not plan.finished and provider.node_id not in plan.banned and not fatal:
                now = time.monotonic()
                piece = plan.next_piece(provider.node_id, now)
                endgame = False
                if piece is None:
                    piece = plan.endgame_piece(provider.node_id, now, endgame_age())
                    endgame = piece is not None
                if piece is None:
                    if plan.in_flight == 0 and not verifying:
                        return
                    wake.clear()
                    # Look again later: a piece in flight may become old enough to duplicate.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), ENDGAME_RECHECK)
                    continue
                try:
                    got = await self._fetch_piece(provider, piece, partial, plan, buffered=endgame)
                except StoreError as exc:  # our disk, not the provider: the whole download stops
                    fatal.append(exc)
                    finished.set()
                    wake.set()
                    return
                except (RemoteProtocolError, LinkClosed, asyncio.TimeoutError, OSError) as exc:
                    plan.piece_failed(piece, provider.node_id)
                    wake.set()
                    busy += 1
                    if isinstance(exc, RemoteProtocolError) and exc.code == "busy" and busy <= MAX_BUSY:
                        await asyncio.sleep(BUSY_BACKOFF)  # the provider's serving budget is in use
                        continue
                    log.info("piece %d-%d from %s failed: %s", piece.start, piece.end,
                             short_node_id(provider.node_id), exc)
                    return
                if got:
                    durations.append(time.monotonic() - now)
                    index = plan.piece_received(piece, provider.node_id)
                    if index is not None:
                        task = asyncio.ensure_future(verify(index))
                        verifying.add(task)
                        task.add_done_callback(verifying.discard)
                wake.set()
                await self._report(plan)

        for _round in range(MAX_ROUNDS):
            live = [p for p in self.providers if p.node_id not in plan.banned and p.alive]
            if plan.finished or not live or fatal:
                break
            workers = [asyncio.ensure_future(worker(p)) for p in live for _ in range(STREAMS_PER_PROVIDER)]
            all_done: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*workers, return_exceptions=True))
            finished_wait: asyncio.Future[Any] = asyncio.ensure_future(finished.wait())
            try:
                # Done when every chunk is verified, even if a vanished provider's streams still hang.
                await asyncio.wait({all_done, finished_wait}, return_when=asyncio.FIRST_COMPLETED)
                while verifying:
                    await asyncio.gather(*list(verifying))
            finally:
                finished_wait.cancel()
                for task in workers:
                    task.cancel()
                await asyncio.gather(all_done, return_exceptions=True)
            for task in workers:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        if fatal:
            raise fatal[0]
        if not plan.finished:
            bad = ", ".join(short_node_id(n) for n in self.bad_providers)
            raise NotFoundError(
                f"could not download {self.sha1}: every provider failed" + (f" (bad data from {bad})" if bad else "")
            )

    async def _fetch_piece(
        self, provider: Provider, piece: Piece, partial: PartialFile, plan: DownloadPlan, buffered: bool
    ) -> bool:
        """Fetch one piece into the partial file. False when another copy got there first.

        Packets carry ~1.3 kB each: they are gathered and written in large blocks. A second copy
        requested in the endgame is held in memory; if it arrives whole first it takes the piece over
        and rewrites all of it, and the other copy writes nothing more. A copy that arrives second
        writes nothing, so it cannot touch bytes already verified.
        """
        buffer = bytearray()
        written = piece.start
        node_id = provider.node_id

        def flush() -> None:
            nonlocal written
            if buffer and plan.claim_write(piece, node_id):
                partial.write_at(written, buffer)
            written += len(buffer)
            buffer.clear()

        def sink(data: bytes) -> None:
            self.last_byte_at = now = time.monotonic()
            if self.first_byte_at is None:
                self.first_byte_at = now
            self.bytes_received += len(data)
            if written + len(buffer) + len(data) > piece.end:
                raise RemoteProtocolError("provider sent more bytes than asked", code="bad_request")
            buffer.extend(data)
            if not buffered and len(buffer) >= WRITE_BLOCK:
                flush()

        session = provider.session
        header = {"op": "get", "sha1": self.sha1, "start": piece.start, "end": piece.end}
        reply = await request_while_alive(session, header, sink, PIECE_TIMEOUT)
        messages.check_ok(reply)
        if written + len(buffer) != piece.end:
            raise RemoteProtocolError(f"provider sent {written + len(buffer) - piece.start} of {piece.size} bytes")
        self.bytes_fetched += piece.size
        # From here to piece_received (in the caller) nothing awaits: no other copy can write between.
        if buffered:
            if not plan.claim_write(piece, node_id, take_over=True):
                return False
            partial.write_at(piece.start, buffer)
            return True
        flush()
        return plan.claim_write(piece, node_id)

    async def _report(self, plan: DownloadPlan, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        message: dict[str, Any] = {
            "bytesLoaded": plan.total_bytes if plan.finished else min(plan.bytes_loaded, plan.total_bytes),
            "bytesTotal": plan.total_bytes,
            "providers": len([p for p in self.providers if p.node_id not in plan.banned]),
            "paths": sorted({p.session.link.path.kind for p in self.providers}),
        }
        if self.first_byte_at is not None:
            message["firstByteSec"] = round(self.first_byte_at - self.started, 4)
        await self.progress(message)
