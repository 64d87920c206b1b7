"""Which byte ranges to ask for, from whom, and what is verified (sans-IO).

A file is a list of verification chunks (the manifest's, or one chunk for a small file). Chunks are
cut into pieces of at most ``piece_size`` bytes when they are handed out, each fetched on its own QUIC
stream. When every byte of a chunk has arrived the caller verifies the chunk's sha1; a failed chunk is
queued again and the providers that sent it are charged for it. Pieces never cross a chunk boundary,
so whatever their size, nothing is used before the chunk that holds it is verified.

Sizing (``min_piece_size`` set): guided self-scheduling. Each piece handed out is the bytes not yet
handed out divided by ``GUIDE`` times the streams at work (``workers``), between ``min_piece_size`` and
``piece_size``: large pieces while much is left (few requests), small ones near the end, so that the
last pieces of every provider end at about the same time and no provider waits on another's tail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .pace import Pace

DEFAULT_PIECE_SIZE = 4 * 1024 * 1024
# Pieces per stream at work, at most, among the bytes not yet handed out (guided sizing).
GUIDE = 2
PIECE_ALIGN = 16 * 1024


@dataclass(frozen=True)
class Piece:
    chunk: int
    start: int
    end: int
    # Bumped each time the chunk is queued again: a stream asked for an older generation can
    # neither write nor count once its chunk was requeued.
    generation: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class _ChunkState:
    start: int
    end: int
    missing: int = 0  # bytes not received yet
    providers: set[str] = field(default_factory=set)
    # After a failed check of a chunk that came from several providers, the chunk is fetched
    # again from one provider only ("pinned" to whoever takes its first piece), so that the next
    # failure points at a single culprit.
    pinned: bool = False
    owner: str | None = None
    generation: int = 0
    queued_before: bool = False
    sources: dict[tuple[int, int], str] = field(default_factory=dict)


class DownloadPlan:
    """Pieces to fetch; chunk completion; bad providers."""

    def __init__(
        self,
        chunks: list[tuple[int, int]],
        verified: set[int],
        piece_size: int = DEFAULT_PIECE_SIZE,
        max_strikes: int = 1,
        min_piece_size: int | None = None,
    ) -> None:
        if piece_size <= 0 or (min_piece_size is not None and not 0 < min_piece_size <= piece_size):
            raise ValueError("piece sizes must be positive, the smallest at most the largest")
        self.piece_size = piece_size
        self.min_piece_size = min_piece_size
        # Streams fetching at once (set by the caller as providers join and leave) and how fast each
        # provider delivers: guided sizing and endgame copies.
        self.workers = 1
        self.pace: Pace | None = None
        self.max_strikes = max_strikes
        self.total_bytes = sum(end - start for start, end in chunks)
        self._chunks = [_ChunkState(start, end) for start, end in chunks]
        self._queue: deque[Piece] = deque()
        self._verified: set[int] = set()
        self.bytes_verified = 0
        self.bytes_received = 0
        self.strikes: dict[str, int] = {}
        self.banned: set[str] = set()
        # Pieces handed out and not yet received, with the providers fetching them, and which of
        # those providers' copy is the one being written to disk.
        self._in_flight: dict[Piece, set[str]] = {}
        self._writers: dict[Piece, str] = {}
        self._handed_at: dict[Piece, float] = {}
        # Work stealing: a piece in flight whose tail was handed to another provider ends earlier
        # (its fetcher stops there), and how many bytes of each piece have arrived so far.
        self._ends: dict[Piece, int] = {}
        self._progress: dict[Piece, int] = {}
        for index in range(len(chunks)):
            if index in verified:
                self._mark_verified(index)
            else:
                self._enqueue_chunk(index)
        self.bytes_resumed = self.bytes_verified

    @property
    def bytes_loaded(self) -> int:
        """Bytes from earlier attempts plus bytes received now (for progress)."""
        return self.bytes_resumed + self.bytes_received

    def _enqueue_chunk(self, index: int) -> None:
        chunk = self._chunks[index]
        chunk.providers.clear()
        chunk.sources.clear()
        chunk.generation += 1 if chunk.queued_before else 0
        chunk.queued_before = True
        # One range per chunk: pieces are cut from its front as they are handed out.
        self._queue.append(Piece(index, chunk.start, chunk.end, chunk.generation))
        chunk.missing = chunk.end - chunk.start

    def _cut(self, piece: Piece, provider: str | None) -> int:
        """How many bytes of the queued range ``piece`` to hand out now."""
        if self.min_piece_size is None:
            return min(piece.size, self.piece_size)
        left = sum(p.size for p in self._queue)
        share = self.pace.share(provider) if self.pace is not None else 1.0
        want = int(-(-left // (GUIDE * max(1, self.workers))) * share)
        want = -(-want // PIECE_ALIGN) * PIECE_ALIGN
        want = max(self.min_piece_size, min(self.piece_size, want))
        # No crumb smaller than the smallest piece left behind.
        return piece.size if piece.size - want < self.min_piece_size else want

    def _mark_verified(self, index: int) -> None:
        if index not in self._verified:
            self._verified.add(index)
            chunk = self._chunks[index]
            self.bytes_verified += chunk.end - chunk.start

    @property
    def finished(self) -> bool:
        return len(self._verified) == len(self._chunks)

    @property
    def pending(self) -> int:
        """Pieces left to hand out (at the largest piece size)."""
        return sum(max(1, -(-p.size // self.piece_size)) for p in self._queue)

    @property
    def bytes_pending(self) -> int:
        return sum(p.size for p in self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def end_of(self, piece: Piece) -> int:
        """Where the piece ends now (earlier than ``piece.end`` once its tail was stolen)."""
        return self._ends.get(piece, piece.end)

    def _current(self, piece: Piece) -> Piece:
        end = self._ends.get(piece, piece.end)
        return piece if end == piece.end else Piece(piece.chunk, piece.start, end, piece.generation)

    def _forget(self, piece: Piece) -> None:
        del self._in_flight[piece]
        self._writers.pop(piece, None)
        self._handed_at.pop(piece, None)
        self._ends.pop(piece, None)
        self._progress.pop(piece, None)

    def arrived(self, piece: Piece, provider: str, count: int) -> None:
        """``count`` bytes of the piece have arrived from ``provider`` (for stealing its tail). The furthest
        any of its fetchers got: once an endgame copy is dropped, a steal never splits below what the
        remaining fetcher may have written already."""
        if self.is_open(piece, provider) and count > self._progress.get(piece, 0):
            self._progress[piece] = count

    def steal(self, provider: str, now: float, min_size: int) -> Piece | None:
        """With nothing left to hand out, take the tail of the piece whose fetcher would end last:
        split at the point where both should end together (by the fetcher's speed on this piece and
        this provider's usual speed). The fetcher stops at the split; nothing is fetched twice."""
        if self._queue or self.pace is None:
            return None
        mine = self.pace.rate(provider)
        best: tuple[float, Piece, int] | None = None
        for piece, fetchers in self._in_flight.items():
            if len(fetchers) != 1 or provider in fetchers or self._chunks[piece.chunk].pinned:
                continue
            done, started = self._progress.get(piece, 0), self._handed_at.get(piece)
            if started is None or done <= 0 or now <= started:
                continue
            theirs = done / (now - started)
            rate = mine or theirs
            end = self.end_of(piece)
            left = end - (piece.start + done)
            split = piece.start + done + int(left * theirs / (theirs + rate))
            split = min(end, -(-split // PIECE_ALIGN) * PIECE_ALIGN)
            if end - split < min_size:
                continue
            finish = left / theirs  # when the fetcher alone would end
            if best is None or finish > best[0]:
                best = (finish, piece, split)
        if best is None:
            return None
        _, piece, split = best
        tail = Piece(piece.chunk, split, self.end_of(piece), piece.generation)
        self._ends[piece] = split
        self._in_flight[tail] = {provider}
        self._handed_at[tail] = now
        return tail

    def next_piece(self, provider: str | None = None, now: float | None = None) -> Piece | None:
        for position, piece in enumerate(self._queue):
            chunk = self._chunks[piece.chunk]
            if chunk.pinned:
                if chunk.owner in self.banned:
                    chunk.owner = None  # its owner was dropped for another chunk: free it
                if chunk.owner is None:
                    chunk.owner = provider
                elif chunk.owner != provider:
                    continue
            size = self._cut(piece, provider)
            if size < piece.size:
                rest = Piece(piece.chunk, piece.start + size, piece.end, piece.generation)
                piece = Piece(piece.chunk, piece.start, piece.start + size, piece.generation)
                self._queue[position] = rest
            else:
                del self._queue[position]
            self._in_flight[piece] = {provider or ""}
            if now is not None:
                self._handed_at[piece] = now
            return piece
        return None

    def take_front(self, size: int, provider: str, now: float | None = None) -> Piece | None:
        """Hand out the file's first ``size`` bytes to ``provider`` as a piece of their own: bytes its answer
        to "has" carries (here, or on their way; from ``now`` on, for endgame copies). None unless the first
        chunk is still to fetch whole; the piece is cut to the first chunk."""
        if not self._queue or size <= 0:
            return None
        first = self._queue[0]
        chunk = self._chunks[first.chunk]
        if first.start != 0 or chunk.start != 0 or first.end != chunk.end or chunk.pinned:
            return None
        piece = Piece(first.chunk, 0, min(size, first.end), first.generation)
        if piece.end < first.end:
            self._queue[0] = Piece(first.chunk, piece.end, first.end, first.generation)
        else:
            self._queue.popleft()
        self._in_flight[piece] = {provider}
        if now is not None:
            self._handed_at[piece] = now
        return piece

    def endgame_piece(
        self, provider: str, now: float | None = None, min_age: float | Callable[[Piece], float] = 0.0
    ) -> Piece | None:
        """With nothing left to hand out, ask for a piece another provider is still fetching, so that
        one slow provider cannot hold up the end. The first copy to arrive is used. Only pieces in
        flight for at least ``min_age`` seconds qualify: duplicating a piece that is about to land
        anyway only wastes bandwidth. With a ``pace`` (and ``now``), the piece chosen is the one this
        provider would deliver soonest ahead of its fetcher, and only if it would."""
        if self._queue:
            return None
        age = min_age if callable(min_age) else (lambda _piece: min_age)
        open_pieces = [
            (piece, fetchers)
            for piece, fetchers in self._in_flight.items()
            if provider not in fetchers and not self._chunks[piece.chunk].pinned
        ]
        chosen: Piece | None = None
        if self.pace is not None and now is not None:
            pace = self.pace
            gains = [
                (gain, piece)
                for piece, fetchers in open_pieces
                if (gain := pace.worth_copying(piece.size, self._handed_at.get(piece, now), fetchers, provider, now))
                is not None
            ]
            if gains:
                chosen = max(gains, key=lambda item: (item[0], -item[1].start))[1]
        else:
            candidates = [
                (len(fetchers), piece)
                for piece, fetchers in open_pieces
                if now is None or now - self._handed_at.get(piece, now) >= age(piece)
            ]
            if candidates:
                chosen = min(candidates, key=lambda item: (item[0], item[1].start))[1]
        if chosen is None:
            return None
        self._in_flight[chosen].add(provider)
        return chosen

    def is_open(self, piece: Piece, provider: str | None = None) -> bool:
        """Still wanted from this provider: handed out to it and not received yet. A copy asked for
        before its chunk was requeued does not count as the re-fetch."""
        fetchers = self._in_flight.get(piece)
        # "" marks a piece handed out without naming the provider: any provider may complete it.
        return fetchers is not None and (provider is None or provider in fetchers or "" in fetchers)

    def claim_write(self, piece: Piece, provider: str, take_over: bool = False) -> bool:
        """May this provider's copy write the piece? The first copy to write keeps the piece, unless
        a complete copy takes it over (``take_over``: an endgame copy that arrived whole, which then
        rewrites the whole piece). A copy that lost the piece writes nothing more."""
        if not self.is_open(piece, provider):
            return False
        writer = self._writers.get(piece)
        if writer is None or writer == provider or take_over:
            self._writers[piece] = provider
            return True
        return False

    def piece_failed(self, piece: Piece, provider: str | None = None) -> None:
        """The piece did not arrive (stream error, timeout): ask again, maybe elsewhere."""
        fetchers = self._in_flight.get(piece)
        if fetchers is None:
            return
        fetchers.discard(provider or "")
        if provider is not None and self._writers.get(piece) == provider:
            del self._writers[piece]  # its partial copy is void; the next copy rewrites the piece
        if provider is not None and fetchers:
            return  # another provider is still fetching it
        current = self._current(piece)
        self._forget(piece)
        self._chunks[piece.chunk].owner = None
        self._queue.appendleft(current)

    def piece_received(self, piece: Piece, provider: str) -> int | None:
        """Returns the chunk index when the chunk is complete and must now be verified."""
        if not self.is_open(piece, provider) or self._writers.get(piece, provider) != provider:
            return None  # a second copy (endgame), or one asked for before a requeue
        current = self._current(piece)
        self._forget(piece)
        chunk = self._chunks[piece.chunk]
        chunk.providers.add(provider)
        chunk.sources[(current.start, current.end)] = provider
        chunk.missing -= current.size
        self.bytes_received += current.size
        return piece.chunk if chunk.missing == 0 else None

    def piece_sources(self, index: int) -> dict[tuple[int, int], str]:
        """Which provider sent each piece (byte range) of a complete chunk."""
        return dict(self._chunks[index].sources)

    def ban(self, provider: str) -> bool:
        """Drop a provider found lying by other means; False if it already was."""
        if provider in self.banned:
            return False
        self.banned.add(provider)
        return True

    def chunk_verified(self, index: int) -> None:
        self._mark_verified(index)

    def chunk_failed(self, index: int) -> list[str]:
        """Queue the chunk again; return the providers banned because of it.

        Only a provider that sent the whole failed chunk is charged: when several providers sent
        pieces of it we cannot tell who lied, so the chunk is fetched again from one of them only.
        """
        chunk = self._chunks[index]
        newly_banned = []
        if len(chunk.providers) == 1:
            (provider,) = chunk.providers
            self.strikes[provider] = self.strikes.get(provider, 0) + 1
            if self.strikes[provider] >= self.max_strikes and provider not in self.banned:
                self.banned.add(provider)
                newly_banned.append(provider)
        self._enqueue_chunk(index)
        chunk.pinned, chunk.owner = True, None
        return newly_banned
