"""The daemon's composition root: identity, store, channels, control endpoint, peer network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from .. import __version__
from ..channels.membership import JoinedChannels
from ..config import CHANNELS_FILENAME, PROTOCOL_VERSION, DaemonConfig
from ..errors import DaemonStoppedError, NotFoundError, StoreError, UsageError
from ..ids import SHA1_EMPTY, FileUri, format_store_uri
from ..quic.identity import NodeIdentity
from ..store import ContentStore
from ..store.filestore import open_regular_file
from . import control_access
from .control import make_app
from .feeds_peers import FeedPeers
from .feeds_service import FeedService
from .files import read_file_range, refuse_peer_lookup
from .lock import write_secret_file
from .running import DownloadRegistry

log = logging.getLogger("kachery_p2p.node")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
# Interrupted downloads are kept this long for resuming, then removed at the next start.
TEMP_MAX_AGE_SEC = 7 * 24 * 3600.0


class RemoteFiles(Protocol):
    """The peer network as the node sees it (built in kachery_p2p.daemon.network)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def info(self) -> dict[str, Any]: ...
    def peers_info(self) -> list[dict[str, Any]]: ...
    def channels_changed(self) -> None: ...
    def find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]: ...
    async def load(self, uri: FileUri, timeout: float | None, progress: Progress) -> Path: ...
    async def read_remote_range(
        self, uri: FileUri, start: int, end: int | None, timeout: float | None
    ) -> tuple[int, AsyncIterator[bytes]]: ...


class Node:
    """Implements the control endpoint's NodeService on top of the store and the peer network."""

    def __init__(self, config: DaemonConfig, identity: NodeIdentity, store: ContentStore) -> None:
        self.config = config
        self.identity = identity
        self.store = store
        self.channels = JoinedChannels(config.config_dir / CHANNELS_FILENAME)
        self.remote: RemoteFiles | None = None
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.downloads = DownloadRegistry()
        self.feeds = FeedService(config.config_dir, identity.node_id)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        # The UDP port first: if it is taken we fail before anything else is set up.
        if self.remote is not None:
            await self.remote.start()
        if self.remote is not None and hasattr(self.remote, "request_handlers"):
            self.feeds.attach(FeedPeers(self.feeds, self.remote))
        token = secrets.token_urlsafe(32)
        app = make_app(self, token)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        fingerprint = await control_access.start_sites(self._runner, self.config)  # loopback (+ --api-host)
        control_access.publish(self.config, token, fingerprint)  # token (+ --auth-group, cert fingerprint)
        write_secret_file(self.config.api_port_path, f"{self.config.api_port}\n")  # where clients find us
        os.chmod(self.config.api_port_path, 0o644)  # not a secret: group members of --auth-group read it too
        removed = await asyncio.to_thread(self.store.cleanup_temp, TEMP_MAX_AGE_SEC)
        if removed:
            log.info("removed %d stale temp files from %s", removed, self.store.temp_dir)
        log.info(
            "kachery-p2p daemon %s: node %s, label %r, store %s, control 127.0.0.1:%d",
            __version__, self.identity.node_id, self.config.label, self.store.root, self.config.api_port,
        )

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        self.downloads.stop_all(DaemonStoppedError("the daemon stopped during the load"))
        if self.remote is not None:
            with contextlib.suppress(Exception):
                await self.remote.stop()
        for path in (self.config.token_path, self.config.api_port_path):
            with contextlib.suppress(OSError):
                path.unlink()
        control_access.unpublish(self.config)
        if self._runner is not None:
            await self._runner.cleanup()
        self.feeds.close()
        log.info("daemon stopped")

    def request_stop(self) -> None:
        self._stop.set()

    # -- information ---------------------------------------------------------------------------
    def probe_info(self) -> dict[str, Any]:
        return {
            "service": "kachery-p2p",
            "protocolVersion": PROTOCOL_VERSION,
            "daemonVersion": __version__,
            "nodeId": self.identity.node_id,
        }

    def node_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            **self.probe_info(),
            "label": self.config.label,
            "channels": self.channels.names(),
            "storageDir": str(self.store.root),
            "configDir": str(self.config.config_dir),
            "apiPort": self.config.api_port,
            "pid": os.getpid(),
            "uptimeSec": round(time.time() - self.started_at, 3),
        }
        if self.remote is not None:
            info.update(self.remote.info())
        return info

    def channel_names(self) -> list[str]:
        return self.channels.names()

    def join_channel(self, name: str) -> bool:
        changed = self.channels.join(name)
        if changed:
            log.info("joined channel %r", name)
        if changed and self.remote is not None:
            self.remote.channels_changed()
        return changed

    def leave_channel(self, name: str) -> bool:
        changed = self.channels.leave(name)
        if changed:
            log.info("left channel %r", name)
        if changed and self.remote is not None:
            self.remote.channels_changed()
        return changed

    def peers_info(self) -> list[dict[str, Any]]:
        return [] if self.remote is None else self.remote.peers_info()

    # -- storing -------------------------------------------------------------------------------
    async def store_path(self, path: Path, name: str) -> dict[str, Any]:
        if not path.is_absolute():
            raise UsageError(f"store needs an absolute path, not {path}")
        if not control_access.group_may_read(self.config, path):  # --auth-group: members send their bytes
            return {"needUpload": True}
        try:  # off the loop, and never blocking on a FIFO (open_regular_file)
            (await asyncio.to_thread(open_regular_file, path)).close()
        except PermissionError:
            return {"needUpload": True}
        except FileNotFoundError:
            raise UsageError(f"cannot read {path}: no such file") from None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        stored = await asyncio.to_thread(self.store.store_file, path)
        return self._stored_reply(stored.sha1, stored.size, stored.manifest_sha1, name)

    async def store_upload(self, chunks: AsyncIterator[bytes], name: str) -> dict[str, Any]:
        temp = self.store.temp_dir / f"upload-{secrets.token_hex(8)}"
        try:
            handle = await asyncio.to_thread(open, temp, "wb")
            try:
                async for block in chunks:
                    await asyncio.to_thread(handle.write, block)
            finally:
                handle.close()
            stored = await asyncio.to_thread(self.store.store_file, temp)
        except OSError as exc:
            raise StoreError(f"cannot store the upload: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        return self._stored_reply(stored.sha1, stored.size, stored.manifest_sha1, name)

    def _stored_reply(self, sha1: str, size: int, manifest_sha1: str | None, name: str) -> dict[str, Any]:
        return {
            "uri": format_store_uri(sha1, name, manifest_sha1),
            "sha1": sha1,
            "size": size,
            "manifestSha1": manifest_sha1,
        }

    # -- loading -------------------------------------------------------------------------------
    def local_path(self, uri: FileUri) -> Path | None:
        if uri.algorithm == "sha1" and uri.hash == SHA1_EMPTY and not self.store.has(SHA1_EMPTY):
            self.store.store_bytes(b"")
        return self.store.find_local(uri)

    async def load(self, uri: FileUri, timeout: float | None, progress: Progress) -> Path:
        if uri.is_dir:
            raise UsageError("directory URIs (sha1dir://) are not supported yet")
        path = await asyncio.to_thread(self.local_path, uri)
        if path is not None:
            return path
        if uri.chunk_of is not None:
            parent = self.store.find_local(FileUri(algorithm="sha1", hash=uri.chunk_of.sha1))
            if parent is not None:
                return await asyncio.to_thread(self._extract_chunk, uri, parent)
        refuse_peer_lookup(uri)
        if self.remote is None:
            raise NotFoundError(f"{uri.hash} is not in the local store and no peer network is running")
        # Loads of one file share one download (see running.py).
        return await self.remote.load(uri, timeout, progress)

    def _extract_chunk(self, uri: FileUri, parent: Path) -> Path:
        assert uri.chunk_of is not None
        with self.store.open_blob_writer(uri.hash, uri.chunk_of.end - uri.chunk_of.start) as writer:
            for block in self.store.read_range(uri.chunk_of.sha1, uri.chunk_of.start, uri.chunk_of.end):
                writer.write(block)
            return writer.commit()

    def find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._find(uri, timeout)

    async def _find(self, uri: FileUri, timeout: float) -> AsyncIterator[dict[str, Any]]:
        path = await asyncio.to_thread(self.local_path, uri)
        if path is not None:
            yield {
                "node_id": self.identity.node_id,
                "label": self.config.label,
                "size": path.stat().st_size,
                "local": True,
                "nodeId": self.identity.node_id,
                "fileSize": path.stat().st_size,
                "fileKey": {"sha1": uri.hash},
            }
        elif uri.algorithm != "sha1":
            refuse_peer_lookup(uri)
        if self.remote is not None and uri.algorithm == "sha1":
            async for provider in self.remote.find(uri, timeout):
                yield provider

    async def open_range(
        self, uri: FileUri, start: int | None, end: int | None, timeout: float | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        first = start or 0
        path = await asyncio.to_thread(self.local_path, uri)
        if path is None:
            refuse_peer_lookup(uri)
        if path is None and self.remote is not None:
            return await self.remote.read_remote_range(uri, first, end, timeout)
        if path is None:
            raise NotFoundError(f"{uri.hash} is not in the local store")
        size = path.stat().st_size
        last = size if end is None else min(end, size)
        if first > last:
            raise UsageError(f"bad range: start {first} is after end {last} (file size {size})")
        return last - first, read_file_range(path, first, last)

