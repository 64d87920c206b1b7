"""File manifests: the chunk list of a large file (pure, no I/O).

JSON shape (reference/storage-compat.md section 3)::

    {"size":<int>,"sha1":"<h40>","chunks":[{"start":<int>,"end":<int, exclusive>,"sha1":"<h40>"},...]}

We write it compactly with 20,000,000-byte chunks, byte-identical to kachery-p2p, so the same file
gets the same manifest hash. On input any valid manifest is accepted (kachery 0.6.7 wrote spaced
JSON with 10 MB chunks); unknown keys are ignored, everything else is checked strictly.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import re
from dataclasses import dataclass

from ..errors import UsageError, VerificationError
from .layout import CHUNK_SIZE

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""A manifest larger than this is refused before parsing (about 600,000 chunks)."""
MAX_FILE_SIZE = 2**53 - 1
"""Largest size a manifest may claim: JavaScript's safe-integer limit, as in the original daemon."""

_SHA1_RE = re.compile(r"[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class ManifestChunk:
    """Bytes ``[start, end)`` of the file hash to ``sha1``."""

    start: int
    end: int
    sha1: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Build it with ``parse`` or ``ManifestBuilder``, or by hand in tests."""

    size: int
    sha1: str
    chunks: tuple[ManifestChunk, ...]

    @functools.cached_property
    def _starts(self) -> tuple[int, ...]:
        return tuple(c.start for c in self.chunks)

    def to_json_bytes(self) -> bytes:
        """The compact JSON kachery-p2p writes (key order size, sha1, chunks / start, end, sha1)."""
        chunks = ",".join(f'{{"start":{c.start},"end":{c.end},"sha1":"{c.sha1}"}}' for c in self.chunks)
        return f'{{"size":{self.size},"sha1":"{self.sha1}","chunks":[{chunks}]}}'.encode("ascii")

    def sha1_of_json(self) -> str:
        """The manifest hash (the ``?manifest=`` value) of ``to_json_bytes()``."""
        return hashlib.sha1(self.to_json_bytes()).hexdigest()

    @classmethod
    def parse(
        cls,
        data: bytes,
        expected_sha1: str | None = None,
        expected_manifest_sha1: str | None = None,
    ) -> Manifest:
        """Parse and validate manifest JSON; VerificationError with a one-line reason otherwise.

        ``expected_sha1`` is the hash of the whole *file* (the URI hash): the manifest's ``sha1``
        field must equal it. ``expected_manifest_sha1`` is the hash of ``data`` itself.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise VerificationError(f"manifest too large ({len(data)} bytes)")
        if expected_manifest_sha1 is not None:
            got, want = hashlib.sha1(data).hexdigest(), expected_manifest_sha1.lower()
            if got != want:
                raise VerificationError(f"manifest hashes to {got}, expected {want}")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise VerificationError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise VerificationError("manifest is not a JSON object")
        size = _int_field(obj, "size", "manifest")
        if size > MAX_FILE_SIZE:
            raise VerificationError(f"manifest size {size} is too large")
        sha1 = _sha1_field(obj, "sha1", "manifest")
        raw_chunks = obj.get("chunks")
        if not isinstance(raw_chunks, list):
            raise VerificationError("manifest has no chunks list")
        chunks = []
        position = 0
        for i, raw in enumerate(raw_chunks):
            where = f"manifest chunk {i}"
            if not isinstance(raw, dict):
                raise VerificationError(f"{where} is not a JSON object")
            start, end = _int_field(raw, "start", where), _int_field(raw, "end", where)
            chunk_sha1 = _sha1_field(raw, "sha1", where)
            if start != position:
                kind = "gap" if start > position else "overlap"
                raise VerificationError(f"{where} starts at {start}, expected {position} ({kind})")
            if end < start or (end == start and size != 0) or end > size:
                raise VerificationError(f"{where} has bad range [{start}, {end}) for size {size}")
            chunks.append(ManifestChunk(start=start, end=end, sha1=chunk_sha1))
            position = end
        if position != size:
            raise VerificationError(f"manifest chunks cover {position} bytes, file size is {size}")
        if size == 0 and len(chunks) > 1:
            raise VerificationError("manifest of an empty file has more than one chunk")
        if expected_sha1 is not None and sha1 != expected_sha1.lower():
            raise VerificationError(f"manifest is for file {sha1}, expected {expected_sha1.lower()}")
        return cls(size=size, sha1=sha1, chunks=tuple(chunks))

    def chunk_index_for(self, offset: int) -> int:
        """Index of the chunk holding byte ``offset``; UsageError outside ``[0, size)``."""
        if offset < 0 or offset >= self.size:
            raise UsageError(f"offset {offset} is outside the file (size {self.size})")
        return bisect.bisect_right(self._starts, offset) - 1

    def chunks_covering(self, start: int, end: int) -> list[int]:
        """Indexes of the chunks overlapping ``[start, end)``; ``end`` is clamped to the size."""
        if start < 0 or end < start:
            raise UsageError(f"bad byte range [{start}, {end})")
        end = min(end, self.size)
        if start >= end:
            return []
        return list(range(self.chunk_index_for(start), self.chunk_index_for(end - 1) + 1))


def _int_field(obj: dict[str, object], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise VerificationError(f"{where}: {key!r} is not an integer")
    if value < 0:
        raise VerificationError(f"{where}: {key!r} is negative ({value})")
    return value


def _sha1_field(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not _SHA1_RE.fullmatch(value):
        raise VerificationError(f"{where}: {key!r} is not a sha1 hash")
    return value.lower()


class ManifestBuilder:
    """Hashes a byte stream incrementally: the whole-file sha1 plus one sha1 per chunk.

    Every byte is hashed at most twice. For the first chunk the whole-file hasher doubles as the
    chunk hasher (a copy of its state is taken at the boundary), so files up to one chunk are
    hashed only once.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size <= 0:
            raise UsageError(f"chunk size must be positive, not {chunk_size}")
        self._chunk_size = chunk_size
        self._whole = hashlib.sha1()
        self._chunk: hashlib._Hash | None = None  # None while still inside the first chunk
        self._chunk_start = 0
        self._size = 0
        self._chunks: list[ManifestChunk] = []
        self._finished = False

    @property
    def size(self) -> int:
        """Bytes seen so far."""
        return self._size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the file."""
        if self._finished:
            raise UsageError("ManifestBuilder.update() after finish()")
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        pos, total = 0, len(view)
        while pos < total:
            chunk_end = self._chunk_start + self._chunk_size
            take = min(total - pos, chunk_end - self._size)
            piece = view[pos : pos + take]
            self._whole.update(piece)
            if self._chunk is not None:
                self._chunk.update(piece)
            pos += take
            self._size += take
            if self._size == chunk_end:
                hasher = self._chunk if self._chunk is not None else self._whole
                self._chunks.append(ManifestChunk(self._chunk_start, self._size, hasher.hexdigest()))
                self._chunk_start = self._size
                self._chunk = hashlib.sha1()

    def finish(self) -> tuple[str, Manifest | None]:
        """The whole-file sha1, and a manifest when the file is larger than one chunk."""
        self._finished = True
        sha1 = self._whole.hexdigest()
        if self._size <= self._chunk_size:
            return sha1, None
        chunks = list(self._chunks)
        if self._size > self._chunk_start:
            assert self._chunk is not None
            chunks.append(ManifestChunk(self._chunk_start, self._size, self._chunk.hexdigest()))
        return sha1, Manifest(size=self._size, sha1=sha1, chunks=tuple(chunks))
