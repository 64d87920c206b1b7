"""Which byte ranges to ask for, from whom, and what is verified (sans-IO).

A file is a list of verification chunks (the manifest's, or one chunk for a small file). Chunks are
cut into pieces of at most ``piece_size`` bytes, each fetched on its own QUIC stream. When every piece
of a chunk has arrived the caller verifies the chunk's sha1; a failed chunk is queued again and the
providers that sent it are charged for it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DEFAULT_PIECE_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Piece:
    chunk: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class _ChunkState:
    start: int
    end: int
    waiting: int = 0
    providers: set[str] = field(default_factory=set)
    # After a failed check of a chunk that came from several providers, the chunk is fetched
    # again from one provider only ("pinned" to whoever takes its first piece), so that the next
    # failure points at a single culprit.
    pinned: bool = False
    owner: str | None = None


class DownloadPlan:
    """Pieces to fetch; chunk completion; bad providers."""

    def __init__(
        self,
        chunks: list[tuple[int, int]],
        verified: set[int],
        piece_size: int = DEFAULT_PIECE_SIZE,
        max_strikes: int = 1,
    ) -> None:
        if piece_size <= 0:
            raise ValueError("piece_size must be positive")
        self.piece_size = piece_size
        self.max_strikes = max_strikes
        self.total_bytes = sum(end - start for start, end in chunks)
        self._chunks = [_ChunkState(start, end) for start, end in chunks]
        self._queue: deque[Piece] = deque()
        self._verified: set[int] = set()
        self.bytes_verified = 0
        self.bytes_received = 0
        self.strikes: dict[str, int] = {}
        self.banned: set[str] = set()
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
        position = chunk.start
        count = 0
        while position < chunk.end or (count == 0 and chunk.start == chunk.end):
            end = min(position + self.piece_size, chunk.end)
            self._queue.append(Piece(index, position, end))
            count += 1
            position = end
            if chunk.start == chunk.end:
                break
        chunk.waiting = count

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
        return len(self._queue)

    def next_piece(self, provider: str | None = None) -> Piece | None:
        for position, piece in enumerate(self._queue):
            chunk = self._chunks[piece.chunk]
            if chunk.pinned:
                if chunk.owner is None:
                    chunk.owner = provider
                elif chunk.owner != provider:
                    continue
            del self._queue[position]
            return piece
        return None

    def piece_failed(self, piece: Piece) -> None:
        """The piece did not arrive (stream error, timeout): ask again, maybe elsewhere."""
        self._chunks[piece.chunk].owner = None
        self._queue.appendleft(piece)

    def piece_received(self, piece: Piece, provider: str) -> int | None:
        """Returns the chunk index when the chunk is complete and must now be verified."""
        chunk = self._chunks[piece.chunk]
        chunk.providers.add(provider)
        chunk.waiting -= 1
        self.bytes_received += piece.size
        return piece.chunk if chunk.waiting == 0 else None

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
