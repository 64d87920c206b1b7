"""Answering peers' file requests from the local store, for channel peers only."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RemoteProtocolError
from ..ids import FileUri
from ..quic import messages
from ..store import CHUNK_SIZE, ContentStore, ManifestBuilder
from ..store.links import LinkedChunks
from .files import read_file_range
from .linked_serve import verified_linked_range
from .serve_budget import SERVE_BLOCK, ServeBudget, budgeted, stream_reservation

if TYPE_CHECKING:
    from .session import PeerSession

log = logging.getLogger("kachery_p2p.serve")

Reply = tuple[dict[str, Any], AsyncIterator[bytes] | None]
# (peer node id, peer label, path kind, sha1, file size, blocks) -> the same blocks, counted as they go
RangeHook = Callable[[str, str, str, str, int, AsyncIterator[bytes]], AsyncIterator[bytes]]


class FileServer:
    """The request handler of every peer session."""

    def __init__(self, store: ContentStore, manifest_cache_size: int = 64) -> None:
        self.store = store
        self._manifests: OrderedDict[str, bytes] = OrderedDict()
        self._manifest_cache_size = manifest_cache_size
        # One lock per manifest being computed, with how many requests use it: an entry lives only
        # while a request for that sha1 is in progress (failed requests included).
        self._manifest_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.bytes_served = 0
        self.budget = ServeBudget()
        self.on_range: RangeHook | None = None  # set by Transfers: uploads in progress
        self.linked = LinkedChunks(store)

    async def handle(self, session: PeerSession, request: messages.Request) -> Reply:
        # Checked where the request is served: a peer that shares no channel gets nothing.
        if not session.shared_channels:
            raise RemoteProtocolError("we share no channel", code="not_authorized")
        if isinstance(request, messages.Has):
            path = await self._path(request.sha1)
            size = path.stat().st_size
            head, peer = min(size, request.head), session.node_id or ""
            # A linked file's bytes are re-hashed before any is sent: no head for it. Nor when the peer's
            # serving budget is in use: the asker then fetches the bytes as usual.
            if head == 0 or path != self.store.content_path(request.sha1) or not self.budget.try_reserve(peer, head):
                return {"ok": True, "size": size}, None
            blocks = budgeted(read_file_range(path, 0, head, block=SERVE_BLOCK), self.budget, peer, head)
            self.bytes_served += head
            if self.on_range is not None:  # an upload like any other: listed, logged ("served ...")
                blocks = self.on_range(peer, session.label, session.link.path.kind, request.sha1, size, blocks)
            return {"ok": True, "size": size, "head": head}, blocks
        if isinstance(request, messages.GetManifest):
            data = await self._manifest(request.sha1)
            return {"ok": True, "length": len(data)}, _once(data)
        if isinstance(request, messages.GetRange):
            path = await self._path(request.sha1)
            size = path.stat().st_size
            if request.end > size:
                raise RemoteProtocolError(f"range ends at {request.end}, after the file's end {size}")
            length = request.end - request.start
            peer = session.node_id or ""
            reserved = stream_reservation(length)
            if not self.budget.try_reserve(peer, reserved):
                raise RemoteProtocolError("serving memory budget in use; try again later", code="busy")
            try:
                if path != self.store.content_path(request.sha1):  # a linked file: each chunk re-hashed first
                    blocks = await verified_linked_range(self.linked, request.sha1, request.start, request.end)
                else:
                    blocks = read_file_range(path, request.start, request.end, block=SERVE_BLOCK)
            except BaseException:
                self.budget.release(peer, reserved)
                raise
            self.bytes_served += length
            if self.on_range is not None:
                blocks = self.on_range(peer, session.label, session.link.path.kind, request.sha1, size, blocks)
            return {"ok": True, "length": length}, budgeted(blocks, self.budget, peer, reserved)
        raise RemoteProtocolError("unsupported request")

    async def _path(self, sha1: str) -> Path:
        # A few stats, made here like the caller's: a worker thread's answer costs a wait for the GIL
        # on a daemon busy sending (read_file_range).
        path = self.store.find_local(FileUri(algorithm="sha1", hash=sha1))
        if path is None:
            raise RemoteProtocolError("not here", code="not_found")
        return path

    async def _manifest(self, sha1: str) -> bytes:
        cached = self._manifests.get(sha1)
        if cached is not None:
            self._manifests.move_to_end(sha1)
            return cached
        lock, users = self._manifest_locks.get(sha1, (asyncio.Lock(), 0))
        self._manifest_locks[sha1] = (lock, users + 1)
        try:
            async with lock:
                return await self._compute_and_cache(sha1)
        finally:
            lock, users = self._manifest_locks[sha1]
            if users == 1:
                del self._manifest_locks[sha1]
            else:
                self._manifest_locks[sha1] = (lock, users - 1)

    async def _compute_and_cache(self, sha1: str) -> bytes:
        cached = self._manifests.get(sha1)
        if cached is not None:
            return cached
        path = await self._path(sha1)
        if path.stat().st_size <= CHUNK_SIZE:
            raise RemoteProtocolError("the file is a single chunk and has no manifest", code="not_found")
        data = await asyncio.to_thread(_compute_manifest, path, sha1)
        if data is None:
            raise RemoteProtocolError("our copy does not match its hash", code="not_found")
        await asyncio.to_thread(self.store.store_bytes, data)
        self._manifests[sha1] = data
        while len(self._manifests) > self._manifest_cache_size:
            self._manifests.popitem(last=False)
        return data


def _compute_manifest(path: Path, sha1: str) -> bytes | None:
    builder = ManifestBuilder()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            builder.update(block)
    whole, manifest = builder.finish()
    if whole != sha1 or manifest is None:
        log.warning("stored file %s does not hash to its name; not serving a manifest", path)
        return None
    return manifest.to_json_bytes()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
