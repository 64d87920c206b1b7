"""The Python API: thin functions over the daemon's control endpoint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import client_config_from_environ
from ..errors import NotFoundError, StoreError, UsageError
from ..ids import FileUri
from .http import ControlClient

ProgressCallback = Callable[[dict[str, Any]], None]


def _client() -> ControlClient:
    return ControlClient(client_config_from_environ())


def _check_uri(uri: str) -> FileUri:
    return FileUri.parse(uri)


def load_file(
    uri: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    timeout_sec: float | None = None,
    progress: ProgressCallback | None = None,
) -> str | None:
    """Make the file available locally; return its path (``dest`` if given), or None if not found."""
    try:
        return fetch_file(uri, dest, timeout_sec=timeout_sec, progress=progress)
    except NotFoundError:
        return None


def fetch_file(
    uri: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    timeout_sec: float | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """Like load_file, but raise NotFoundError (with the daemon's reason) instead of returning None."""
    _check_uri(uri)
    client = _client()
    path: str | None = None
    for message in client.post_json_lines("/load", {"uri": uri, "timeoutSec": timeout_sec}, timeout=None):
        kind = message.get("type")
        if kind == "progress" and progress is not None:
            progress(message)
        elif kind == "done":
            path = str(message["path"])
    if path is None:
        raise NotFoundError(f"file not found: {uri}")
    if dest is None:
        return path
    _copy_atomically(client, uri, Path(path), Path(dest))
    return str(dest)


def _copy_atomically(client: ControlClient, uri: str, source: Path, dest: Path) -> None:
    """Copy into ``dest`` through a temp file in the same directory, so dest is whole or absent."""
    dest = dest.expanduser()
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.is_dir():
        raise UsageError(f"--dest {dest} is a directory; give a file path")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            except PermissionError:
                for block in client.post_for_bytes("/read", {"uri": uri}):
                    out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_bytes(
    uri: str, start: int | None = None, end: int | None = None, *, timeout_sec: float | None = None
) -> bytes | None:
    """Bytes [start, end) of the file (end exclusive); None if not found."""
    _check_uri(uri)
    payload: dict[str, Any] = {"uri": uri, "start": start, "end": end, "timeoutSec": timeout_sec}
    try:
        return b"".join(_client().post_for_bytes("/read", payload, timeout=None))
    except NotFoundError:
        return None


def iter_bytes(
    uri: str, start: int | None = None, end: int | None = None, *, timeout_sec: float | None = None
) -> Iterator[bytes]:
    """Stream bytes [start, end) of the file; raises NotFoundError if no copy is found."""
    _check_uri(uri)
    payload: dict[str, Any] = {"uri": uri, "start": start, "end": end, "timeoutSec": timeout_sec}
    yield from _client().post_for_bytes("/read", payload, timeout=None)


def load_text(uri: str, *, timeout_sec: float | None = None) -> str | None:
    data = load_bytes(uri, timeout_sec=timeout_sec)
    return None if data is None else data.decode("utf-8")


def load_json(uri: str, *, timeout_sec: float | None = None) -> Any:
    """The parsed JSON, or None if the file is not found."""
    text = load_text(uri, timeout_sec=timeout_sec)
    return None if text is None else json.loads(text)


def find_file(uri: str, timeout_sec: float = 5.0) -> Iterator[dict[str, Any]]:
    """Yield one dict per provider as answers arrive: ``node_id``, ``label``, ``size``, ``local``."""
    _check_uri(uri)
    for message in _client().post_json_lines(
        "/find", {"uri": uri, "timeoutSec": timeout_sec}, timeout=timeout_sec + 30
    ):
        if message.get("type") == "provider":
            message.pop("type")
            yield message


def store_file(path: str | os.PathLike[str], basename: str | None = None) -> str:
    """Store a local file in the content store; return its ``sha1://`` URI."""
    source = Path(path).expanduser().absolute()
    if not source.exists():
        raise UsageError(f"cannot read {path}: no such file")
    if not source.is_file():
        raise UsageError(f"cannot store {path}: not a regular file")
    if str(path).endswith("/"):
        raise UsageError(f"cannot read {path}: not a directory")
    name = basename if basename is not None else source.name
    client = _client()
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            result = client.post_json("/store", {"path": str(source), "name": name}, timeout=3600.0)
            if result.get("needUpload"):
                result = client.post_stream("/upload", handle, size, name)
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    return str(result["uri"])


def store_bytes(data: bytes, basename: str = "file.dat") -> str:
    """Store bytes; return the URI."""
    import io

    return str(_client().post_stream("/upload", io.BytesIO(data), len(data), basename)["uri"])


def store_text(text: str, basename: str = "file.txt") -> str:
    return store_bytes(text.encode("utf-8"), basename)


def store_json(obj: Any, basename: str = "file.json") -> str:
    return store_bytes(json.dumps(obj, separators=(",", ":")).encode("utf-8"), basename)


def get_node_id() -> str:
    return str(_client().get_json("/node-info")["nodeId"])


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
