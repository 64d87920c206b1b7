"""The Python API: thin functions over the daemon's control endpoint, with the original kachery-p2p's
signatures (``p2p=``, ``from_node=``, ``from_channel=``, ``basename=``) and return values.

Three modes, chosen per call:
* offline (``KACHERY_OFFLINE_STORAGE_DIR`` set): no daemon; the store there is read and written here;
* local-only (``p2p=False`` or ``_experimental_config(nop2p=True)``): the local store is read, the
  peer network is never asked;
* otherwise the daemon loads (from peers if needed) and stores.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..client_config import client_config_from_environ, storage_dir_from_environ
from ..errors import DaemonStoppedError, NotFoundError, StoreError, UsageError, VerificationError
from ..ids import SHA1_EMPTY, FileUri, format_store_uri
from . import legacy_dirs, local
from .connect import LOOPBACK
from .http import ControlClient
from .loading import decode_text, file_blocks, parse_json, write_dest

ProgressCallback = Callable[[dict[str, Any]], None]


def _client() -> ControlClient:
    if local.offline_root() is not None:
        raise UsageError(
            f"not available in offline mode ({local.OFFLINE_ENV} is set): only files can be loaded and stored"
        )
    return ControlClient(client_config_from_environ())


def _local_only(p2p: bool) -> bool:
    return not p2p or local.settings.nop2p


def _local_root(client: ControlClient) -> Path:
    """The daemon's store as this process sees it: $KACHERY_STORAGE_DIR, else what the daemon reports."""
    if os.environ.get("KACHERY_STORAGE_DIR"):
        return storage_dir_from_environ()
    return Path(str(client.get_json("/node-info")["storageDir"]))


def _resolve(uri: str, p2p: bool, from_node: str | None, timeout_sec: float | None) -> FileUri:
    """Parse; a ``sha1dir://`` URI becomes the ``sha1://`` URI of the file it names."""
    parsed = FileUri.parse(uri)
    if not parsed.is_dir:
        return parsed

    def load_dir_object(dir_uri: str) -> Any:
        return json.loads(_bytes(FileUri.parse(dir_uri), None, None, p2p, from_node, timeout_sec))

    return FileUri.parse(legacy_dirs.resolve(parsed, load_dir_object))


# -- loading ---------------------------------------------------------------------------------------


def load_file(
    uri: str,
    dest: str | os.PathLike[str] | None = None,
    p2p: bool = True,
    from_node: str | None = None,
    from_channel: str | None = None,
    *,
    timeout_sec: float | None = None,
    progress: ProgressCallback | None = None,
) -> str | None:
    """Make the file available locally; its path (``dest`` if given), or None if not found.

    ``p2p=False`` looks only in the local store. ``from_node`` loads only if that node has the file
    (the bytes are checked against the hash whoever sends them). ``from_channel`` is accepted for
    compatibility and has no effect (peers must share a channel anyway).
    """
    try:
        return fetch_file(uri, dest, p2p=p2p, from_node=from_node, timeout_sec=timeout_sec, progress=progress)
    except NotFoundError:
        return None


def fetch_file(
    uri: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    p2p: bool = True,
    from_node: str | None = None,
    timeout_sec: float | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """Like load_file, but raise NotFoundError (with the reason) instead of returning None."""
    if "://" not in uri and Path(uri).is_file():  # the original accepted local paths
        path = Path(uri)
    else:
        path = _find_path(_resolve(uri, p2p, from_node, timeout_sec), p2p, from_node, timeout_sec, progress)
    if dest is None:
        return str(path)
    write_dest(Path(dest), file_blocks(path, lambda: iter_bytes(uri, p2p=p2p, timeout_sec=timeout_sec)))
    return str(dest)


def _find_path(
    uri: FileUri, p2p: bool, from_node: str | None, timeout_sec: float | None, progress: ProgressCallback | None
) -> Path:
    offline = local.offline_store()
    if offline is not None:
        return local.find_or_make_offline(offline, uri)
    client = _client()
    root = _local_root(client) if _local_only(p2p) or uri.chunk_of is not None or from_node else None
    if root is not None:
        path = local.find_in(root, uri)
        if path is not None:
            return path
        if uri.chunk_of is not None:
            return _load_chunk(client, root, uri, p2p, timeout_sec)
        if _local_only(p2p) and uri.hash != SHA1_EMPTY:
            raise NotFoundError(f"{uri.hash} is not in the local store (p2p=False)")
    if from_node is not None and not _local_only(p2p):
        providers = {p.get("nodeId") for p in find_file(str(uri), timeout_sec=timeout_sec or 5.0)}
        if from_node.lower() not in providers:
            raise NotFoundError(f"node {from_node} does not have {uri.hash}")
    found: str | None = None
    payload = {"uri": str(uri), "timeoutSec": timeout_sec}
    for message in client.post_json_lines("/load", payload, what="the load"):
        kind = message.get("type")
        if kind == "progress" and progress is not None:
            progress(message)
        elif kind == "done":
            found = str(message["path"])
    if found is None:
        raise DaemonStoppedError("the daemon stopped during the load")
    return Path(found)


def _load_chunk(client: ControlClient, root: Path, uri: FileUri, p2p: bool, timeout_sec: float | None) -> Path:
    """A ``?chunkOf=`` URI: the parent's byte range (local, or from peers), verified, then stored."""
    import hashlib  # here, not at the top: a command that loads no chunk does not pay for it

    data = _bytes(uri, None, None, p2p, None, timeout_sec)
    if hashlib.sha1(data).hexdigest() != uri.hash:
        raise VerificationError(f"bytes {uri.chunk_of} do not hash to {uri.hash}")
    client.post_stream("/upload", io.BytesIO(data), len(data), "chunk")
    path = local.find_in(root, uri)
    if path is None:
        raise StoreError(f"the daemon stored chunk {uri.hash} but it is not in {root}")
    return path


def _bytes(
    uri: FileUri, start: int | None, end: int | None, p2p: bool, from_node: str | None, timeout_sec: float | None
) -> bytes:
    """Bytes [start, end) of a resolved URI; NotFoundError when there is no copy."""
    if uri.chunk_of is not None:  # a range of the chunk is a range of its parent
        chunk = uri.chunk_of
        first = chunk.start + (start or 0)
        last = chunk.end if end is None else min(chunk.end, chunk.start + end)
        return _bytes(FileUri("sha1", chunk.sha1), first, max(first, last), p2p, from_node, timeout_sec)
    offline = local.offline_root()
    if offline is not None or _local_only(p2p) or from_node is not None:
        path = _find_path(uri, p2p, from_node, timeout_sec, None)
        return local.read_local(path, start, end)
    payload: dict[str, Any] = {"uri": str(uri), "start": start, "end": end, "timeoutSec": timeout_sec}
    return b"".join(_client().read_frames("/read", payload))


def load_bytes(
    uri: str,
    start: int | None = None,
    end: int | None = None,
    write_to_stdout: bool = False,
    p2p: bool = True,
    from_node: str | None = None,
    from_channel: str | None = None,
    *,
    timeout_sec: float | None = None,
) -> bytes | None:
    """Bytes [start, end) of the file (end exclusive); None if not found."""
    try:
        data = _bytes(_resolve(uri, p2p, from_node, timeout_sec), start, end, p2p, from_node, timeout_sec)
    except NotFoundError:
        return None
    if write_to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return data


def iter_bytes(
    uri: str, start: int | None = None, end: int | None = None, *, p2p: bool = True, timeout_sec: float | None = None
) -> Iterator[bytes]:
    """Stream bytes [start, end) of the file; raises NotFoundError if no copy is found."""
    parsed = _resolve(uri, p2p, None, timeout_sec)
    if local.offline_root() is not None or _local_only(p2p) or parsed.chunk_of is not None:
        yield _bytes(parsed, start, end, p2p, None, timeout_sec)
        return
    payload: dict[str, Any] = {"uri": str(parsed), "start": start, "end": end, "timeoutSec": timeout_sec}
    yield from _client().read_frames("/read", payload)


def load_text(
    uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None,
    *, timeout_sec: float | None = None,
) -> str | None:
    """The file decoded as UTF-8, or None if not found; FileFormatError if it is not text."""
    data = load_bytes(uri, p2p=p2p, from_node=from_node, timeout_sec=timeout_sec)
    return None if data is None else decode_text(data, uri)


def load_json(
    uri: str, p2p: bool = True, from_node: str | None = None, from_channel: str | None = None,
    *, timeout_sec: float | None = None,
) -> Any:
    """The parsed JSON, or None if the file is not found; FileFormatError if it is not JSON."""
    text = load_text(uri, p2p=p2p, from_node=from_node, timeout_sec=timeout_sec)
    return None if text is None else parse_json(text, uri)


def find_file(uri: str, timeout_sec: float = 5.0) -> Iterator[dict[str, Any]]:
    """Yield one dict per provider as answers arrive: ``node_id``/``nodeId``, ``label``, ``size``, ``local``.

    Offline: this node only, if it has the file. With ``_experimental_config(nop2p=True)``: nothing.
    """
    parsed = _resolve(uri, True, None, timeout_sec)
    offline = local.offline_root()
    if offline is not None:
        path = local.find_in(offline, parsed)
        if path is not None:
            yield from local.local_provider("offline", path, parsed)
        return
    if local.settings.nop2p:
        return
    for message in _client().post_json_lines(
        "/find", {"uri": str(parsed), "timeoutSec": timeout_sec}, timeout=timeout_sec + 30
    ):
        if message.get("type") == "provider":
            message.pop("type")
            yield message


# -- storing ---------------------------------------------------------------------------------------


def store_file(path: str | os.PathLike[str], basename: str | None = None) -> str:
    """Store a local file in the content store; return its ``sha1://`` URI."""
    source = _source(path, "store")
    name = basename if basename is not None else source.name
    offline = local.offline_store()
    if offline is not None:
        stored = offline.store_file(source)
        return format_store_uri(stored.sha1, name, stored.manifest_sha1)
    client = _client()
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            remote = client.config.api_host not in LOOPBACK  # its files are not ours: send the bytes
            result = {"needUpload": True} if remote else client.post_json(
                "/store", {"path": str(source), "name": name}, timeout=3600.0
            )
            if result.get("needUpload"):
                result = client.post_stream("/upload", handle, size, name)
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    return str(result["uri"])


def link_file(path: str | os.PathLike[str], basename: str | None = None) -> str:
    """Hash a file where it lies and record it in the store as a link (no copy); its URI.

    The file is served and loaded only while it keeps its size and mtime, and peers only ever get
    chunks that still hash right. ``kachery-p2p-load`` of the URI prints the file's own path.
    """
    from ..store.links import link_file as link_in_store

    source = _source(path, "link")
    name = basename if basename is not None else source.name
    offline = local.offline_store()
    if offline is not None:
        linked = link_in_store(offline, source, writer="python")
        return format_store_uri(linked.sha1, name, linked.manifest_sha1)
    result = _client().post_json("/link", {"path": str(source), "name": name}, timeout=3600.0)
    return str(result["uri"])


def _source(path: str | os.PathLike[str], verb: str) -> Path:
    source = Path(path).expanduser().absolute()
    if not source.exists():
        raise UsageError(f"cannot read {path}: no such file")
    if not source.is_file() or str(path).endswith("/"):
        raise UsageError(f"cannot {verb} {path}: not a regular file")
    return source


def store_bytes(data: bytes, basename: str | None = None) -> str:
    """Store bytes; return the URI (named ``file.dat`` unless ``basename`` is given)."""
    name = basename if basename is not None else "file.dat"
    offline = local.offline_store()
    if offline is not None:
        stored = offline.store_bytes(data)
        return format_store_uri(stored.sha1, name, stored.manifest_sha1)
    return str(_client().post_stream("/upload", io.BytesIO(data), len(data), name)["uri"])


def store_text(text: str, basename: str | None = None) -> str:
    """Store text as UTF-8 (named ``file.txt`` by default); its URI."""
    return store_bytes(text.encode("utf-8"), basename if basename is not None else "file.txt")


def store_json(object: Any, basename: str | None = None) -> str:
    """Store a JSON value, compact (named ``file.json`` by default); its URI."""
    data = json.dumps(object, separators=(",", ":")).encode("utf-8")
    return store_bytes(data, basename if basename is not None else "file.json")


# -- the node --------------------------------------------------------------------------------------


def get_node_id(api_port: int | None = None) -> str:
    """This node's id (``api_port`` selects another local daemon, as in the original)."""
    client = _client()
    if api_port is not None:
        client = ControlClient(client_config_from_environ({**os.environ, "KACHERY_P2P_API_PORT": str(api_port)}))
    return str(client.get_json("/node-info")["nodeId"])


def get_node_info() -> dict[str, Any]:
    return _client().get_json("/node-info")


def get_channels() -> list[str]:
    return [str(name) for name in _client().get_json("/channels")["channels"]]


def join_channel(name: str) -> bool:
    """Join a channel; False when already joined."""
    return bool(_client().post_json("/channels/join", {"name": name})["changed"])


def leave_channel(name: str) -> bool:
    """Leave a channel; False when it was not joined."""
    return bool(_client().post_json("/channels/leave", {"name": name})["changed"])


def get_peers() -> list[dict[str, Any]]:
    return list(_client().get_json("/peers")["peers"])


def stop_daemon() -> None:
    _client().post_json("/halt", {})


def probe() -> dict[str, Any]:
    return _client().probe()
